// Package parentdeath starts child processes that the kernel kills when the
// process that started them dies, however it dies (kill -9 included).
//
// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not
// the process. Go may end an OS thread while the process lives (a goroutine
// that locked its thread and returned without unlocking it: network
// namespace code does this on purpose), and any goroutine may have run the
// fork on such a thread. So every Start forks from one thread that is
// locked for the life of the process and never returns.
package parentdeath

import (
	"os/exec"
	"runtime"
	"sync"
	"syscall"
)

var (
	once sync.Once
	reqs chan func()
)

// Start starts cmd from the process's launcher thread with a parent-death
// signal: SIGKILL unless cmd.SysProcAttr names another. The kernel applies
// it after cmd's credentials (Go sets it last), so a child that drops its
// identity still gets it.
func Start(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	if cmd.SysProcAttr.Pdeathsig == 0 {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	var err error
	onLauncherThread(func() { err = cmd.Start() })
	return err
}

// onLauncherThread runs f on the launcher thread and waits for it.
func onLauncherThread(f func()) {
	once.Do(func() {
		reqs = make(chan func())
		go func() {
			// Never unlocked, never returns: the thread lives as long as
			// the process, and so do the parent-death signals it set up.
			runtime.LockOSThread()
			for f := range reqs {
				f()
			}
		}()
	})
	done := make(chan struct{})
	reqs <- func() { defer close(done); f() }
	<-done
}

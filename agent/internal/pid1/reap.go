package pid1

import (
	"os"
	"os/signal"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Reaper collects every child of the agent that exits: container inits and
// exec'd processes (libcontainer makes them our children), and, as PID 1,
// every process orphaned into init. The status of a pid registered through
// Spawn goes to its owner; every other status is dropped.
//
// Reaping is exclusive with Spawn: code that starts children and waits for
// some of them itself (libcontainer waits for its bootstrap processes;
// os/exec.Cmd.Run waits for its command) must do so inside Spawn, or the
// reaper could collect a status that the waiter then never sees.
type Reaper struct {
	mu      sync.Mutex
	waiters map[int]func(unix.WaitStatus, time.Time)
}

// StartReaper starts reaping. When the agent is not PID 1 (a test or debug
// run) it makes itself a child subreaper, so that orphaned container
// processes are still its to collect.
func StartReaper() (*Reaper, error) {
	if !IsInit() {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			return nil, os.NewSyscallError("prctl(PR_SET_CHILD_SUBREAPER)", err)
		}
	}
	r := &Reaper{waiters: map[int]func(unix.WaitStatus, time.Time){}}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, unix.SIGCHLD)
	go func() {
		for range ch {
			r.reapAll()
		}
	}()
	// Children that exited before Notify took effect.
	go r.reapAll()
	return r, nil
}

// Spawn runs start with reaping suspended. start launches child processes
// and waits for those it owns; it returns the pid of the one child whose
// exit the caller wants (0 for none). That pid is registered before reaping
// resumes, so exited is called exactly once with its status, even if it has
// already exited by then. exited runs on the reaper's goroutine and must not
// block or call Spawn.
func (r *Reaper) Spawn(start func() (pid int, err error), exited func(unix.WaitStatus, time.Time)) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := start()
	if err != nil {
		return err
	}
	if pid > 0 && exited != nil {
		r.waiters[pid] = exited
	}
	return nil
}

func (r *Reaper) reapAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
		if !ws.Exited() && !ws.Signaled() {
			continue // stopped or continued: not an exit
		}
		if fn, ok := r.waiters[pid]; ok {
			delete(r.waiters, pid)
			fn(ws, time.Now())
		}
	}
}

package shimv2

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/containerd/log"

	"github.com/kasa-runtime/kasa/virtcontainers"
)

// reapCommand is the shim's own command for a sandbox's reaper:
// `containerd-shim-kasa-v2 reap-sandbox <id>`, the read end of a pipe whose
// only write end the shim holds as descriptor 3.
//
// CRI-O never runs `shim delete`, so when a shim dies nothing of the
// manager's cleans up after it. The VM dies with the shim (QEMU's
// parent-death signal); the reaper, a small process of its own session
// started before the VM, sees the pipe close when the shim ends, however
// it ends, and if the sandbox's state is still there (the shim did not
// stop it) it cleans up: mounts, taps, cgroup, state. Under containerd its
// cleanup and `shim delete`'s are serialised and either finds the other's
// done.
const reapCommand = "reap-sandbox"

// startReaper starts sandbox id's reaper and returns the pipe's write end,
// which the shim must hold until it exits; a variable for tests.
var startReaper = startReaperProcess

func startReaperProcess(id string) (*os.File, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	r, w, err := os.Pipe() // close-on-exec: no other child of the shim holds w
	if err != nil {
		return nil, err
	}
	defer r.Close()
	cmd := exec.Command(self, reapCommand, id)
	cmd.ExtraFiles = []*os.File{r}
	cmd.Stderr = os.Stderr // the shim's log
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	// It detaches (reaperDetachedEnv) and this first process exits at
	// once: the reaper is no descendant of the shim, which a pod cgroup
	// taking the shim and its descendants (sandbox_cgroup_only) would
	// otherwise take too.
	if err := cmd.Run(); err != nil {
		w.Close()
		return nil, fmt.Errorf("start the sandbox's reaper: %w", err)
	}
	return w, nil
}

// reaperDetachedEnv marks the reaper's second process, the one that waits.
const reaperDetachedEnv = "KASA_REAPER_DETACHED"

// detachReaper starts the waiting reaper as a new process with the same
// pipe, and returns: its parent exits, so that it is no descendant of the
// shim.
func detachReaper(id string) int {
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "reaper of %s: %v\n", id, err)
		return 1
	}
	cmd := exec.Command(self, reapCommand, id)
	cmd.ExtraFiles = []*os.File{os.NewFile(3, "shim")}
	cmd.Stderr = os.Stderr
	cmd.Dir = "/"
	cmd.Env = append(os.Environ(), reaperDetachedEnv+"=1")
	// Its own session: signals to the shim's process group miss it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "reaper of %s: %v\n", id, err)
		return 1
	}
	return 0
}

// runReaper is the reaper: it waits for the shim to end, then cleans up
// what it left of sandbox id.
func runReaper(id string) int {
	// Its stderr is the shim's log, a FIFO whose reader (containerd,
	// CRI-O) may be gone by now: a write must fail, not kill it.
	signal.Ignore(syscall.SIGPIPE)
	alive := os.NewFile(3, "shim")
	_, _ = io.Copy(io.Discard, alive) // EOF: the shim exited, one way or another
	ctx := log.WithLogger(context.Background(), log.L.WithField("sandbox", id).WithField("reaper", os.Getpid()))
	if !virtcontainers.HasState(id) {
		return 0 // the shim stopped its sandbox
	}
	log.G(ctx).Warn("the sandbox's shim exited leaving its sandbox: cleaning up")
	if err := virtcontainers.CleanupSandbox(ctx, id); err != nil {
		log.G(ctx).WithError(err).Error("cleaning up after the sandbox's shim")
		return 1
	}
	return 0
}

// OwnCommand runs what the shim answers itself, before containerd's shim
// library parses the command line: a version request (PrintVersion) and
// the reaper, and containerd 2.x's -info (RuntimeInfo). It reports whether it handled args (os.Args) and the exit
// code.
func OwnCommand(args []string, stdout io.Writer) (code int, handled bool) {
	if len(args) == 0 {
		return 0, false
	}
	if PrintVersion(args[0], args[1:], stdout) {
		return 0, true
	}
	if len(args) == 2 && args[1] == infoFlag {
		return printInfo(stdout), true
	}
	if len(args) == 3 && args[1] == reapCommand {
		if os.Getenv(reaperDetachedEnv) == "" {
			return detachReaper(args[2]), true
		}
		return runReaper(args[2]), true
	}
	return 0, false
}

package container

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/containerd/containerd/errdefs"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// consoleWait bounds how long the agent waits for a container's init to
// hand over its terminal once libcontainer has started it.
const consoleWait = 10 * time.Second

// veof is what CloseStdin writes to a terminal: the default VEOF character
// (^D), end of file for a reader in canonical mode.
const veof = 0x04

// Process is one process the agent started in a container (its init or an
// exec) with its stdio.
type Process struct {
	execID   string
	terminal bool
	lp       *libcontainer.Process
	pid      int

	// stdin is the pipe's write end, or the terminal master; nil when the
	// process has no stdin or it was closed.
	stdinMu  sync.Mutex
	stdin    *os.File
	hasStdin bool
	master   *os.File // terminal master; nil without a terminal

	stdout, stderr *stream

	// Set up by prepareIO: the ends given to the process (closed once it
	// started), what the agent reads, and the console socket.
	childEnds   []*os.File
	sources     []*os.File
	consoleSock *os.File

	exited   chan struct{}
	exitCode int
	exitedAt time.Time
}

func newProcess(execID string, lp *libcontainer.Process, terminal, stdin bool) *Process {
	return &Process{execID: execID, lp: lp, terminal: terminal, hasStdin: stdin, exited: make(chan struct{})}
}

// libcontainerProcess turns an OCI process into libcontainer's, as runc does.
func libcontainerProcess(p *specs.Process) (*libcontainer.Process, error) {
	lp := &libcontainer.Process{
		Args:            p.Args,
		Env:             p.Env,
		UID:             int(p.User.UID),
		GID:             int(p.User.GID),
		Cwd:             p.Cwd,
		NoNewPrivileges: &p.NoNewPrivileges,
		Scheduler:       p.Scheduler,
		IOPriority:      p.IOPriority,
	}
	if lp.Cwd == "" {
		lp.Cwd = "/"
	}
	if p.ConsoleSize != nil {
		lp.ConsoleWidth, lp.ConsoleHeight = uint16(p.ConsoleSize.Width), uint16(p.ConsoleSize.Height)
	}
	if c := p.Capabilities; c != nil {
		lp.Capabilities = &configs.Capabilities{
			Bounding: c.Bounding, Effective: c.Effective, Inheritable: c.Inheritable,
			Permitted: c.Permitted, Ambient: c.Ambient,
		}
	}
	for _, g := range p.User.AdditionalGids {
		lp.AdditionalGroups = append(lp.AdditionalGroups, int(g))
	}
	for _, r := range p.Rlimits {
		t, ok := rlimits[r.Type]
		if !ok {
			return nil, fmt.Errorf("process rlimit %q: unknown type: %w", r.Type, errdefs.ErrInvalidArgument)
		}
		lp.Rlimits = append(lp.Rlimits, configs.Rlimit{Type: t, Hard: r.Hard, Soft: r.Soft})
	}
	aff, err := configs.ConvertCPUAffinity(p.ExecCPUAffinity)
	if err != nil {
		return nil, fmt.Errorf("process execCPUAffinity: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	lp.CPUAffinity = aff
	return lp, nil
}

var rlimits = map[string]int{
	"RLIMIT_CPU": unix.RLIMIT_CPU, "RLIMIT_FSIZE": unix.RLIMIT_FSIZE, "RLIMIT_DATA": unix.RLIMIT_DATA,
	"RLIMIT_STACK": unix.RLIMIT_STACK, "RLIMIT_CORE": unix.RLIMIT_CORE, "RLIMIT_RSS": unix.RLIMIT_RSS,
	"RLIMIT_NPROC": unix.RLIMIT_NPROC, "RLIMIT_NOFILE": unix.RLIMIT_NOFILE, "RLIMIT_MEMLOCK": unix.RLIMIT_MEMLOCK,
	"RLIMIT_AS": unix.RLIMIT_AS, "RLIMIT_LOCKS": unix.RLIMIT_LOCKS, "RLIMIT_SIGPENDING": unix.RLIMIT_SIGPENDING,
	"RLIMIT_MSGQUEUE": unix.RLIMIT_MSGQUEUE, "RLIMIT_NICE": unix.RLIMIT_NICE, "RLIMIT_RTPRIO": unix.RLIMIT_RTPRIO,
	"RLIMIT_RTTIME": unix.RLIMIT_RTTIME,
}

// prepareIO creates the process's stdio: pipes, or a console socket over
// which its init will send the terminal master.
func (p *Process) prepareIO() (retErr error) {
	defer func() {
		if retErr != nil {
			p.closeFiles()
		}
	}()
	if p.terminal {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("console socket: %w", err)
		}
		p.consoleSock = os.NewFile(uintptr(fds[0]), "console-socket")
		child := os.NewFile(uintptr(fds[1]), "console-socket-child")
		p.childEnds = append(p.childEnds, child)
		p.lp.ConsoleSocket = child
		return nil
	}
	pipe := func() (r, w *os.File, err error) {
		r, w, err = os.Pipe()
		if err != nil {
			return nil, nil, fmt.Errorf("stdio pipe: %w", err)
		}
		return r, w, nil
	}
	r, w, err := pipe()
	if err != nil {
		return err
	}
	p.sources, p.childEnds, p.lp.Stdout = append(p.sources, r), append(p.childEnds, w), w
	if r, w, err = pipe(); err != nil {
		return err
	}
	p.sources, p.childEnds, p.lp.Stderr = append(p.sources, r), append(p.childEnds, w), w
	if p.hasStdin {
		if r, w, err = pipe(); err != nil {
			return err
		}
		p.childEnds, p.stdin, p.lp.Stdin = append(p.childEnds, r), w, r
	}
	return nil
}

// started finishes the stdio setup once libcontainer started the process:
// drops the process's ends and starts draining its output.
func (p *Process) started() error {
	for _, f := range p.childEnds {
		f.Close()
	}
	p.childEnds = nil
	if !p.terminal {
		p.stdout, p.stderr = newStream(streamLimit), newStream(streamLimit)
		// The read ends are the copiers' alone: closed as soon as drained.
		for i, s := range []*stream{p.stdout, p.stderr} {
			go func(s *stream, src *os.File) {
				s.fill(src)
				src.Close()
			}(s, p.sources[i])
		}
		return nil
	}
	master, err := receiveConsole(p.consoleSock)
	p.consoleSock.Close()
	p.consoleSock = nil
	if err != nil {
		return err
	}
	p.master = master
	if p.hasStdin {
		p.stdin = master
	}
	p.stdout, p.stderr = newStream(streamLimit), endedStream()
	go p.stdout.fill(master)
	return nil
}

// receiveConsole reads the terminal master that the container's init sends
// over the console socket.
func receiveConsole(sock *os.File) (*os.File, error) {
	conn, err := net.FileConn(sock)
	if err != nil {
		return nil, fmt.Errorf("console socket: %w", err)
	}
	defer conn.Close()
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return nil, errors.New("console socket is not a unix socket")
	}
	uc.SetReadDeadline(time.Now().Add(consoleWait))
	oob := make([]byte, unix.CmsgSpace(4))
	name := make([]byte, 4096)
	n, oobn, _, _, err := uc.ReadMsgUnix(name, oob)
	if err != nil {
		return nil, fmt.Errorf("receive terminal from container: %w", err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return nil, fmt.Errorf("receive terminal from container: bad control message (%v)", err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("receive terminal from container: want one descriptor (%v)", err)
	}
	unix.CloseOnExec(fds[0])
	// Non-blocking, so that the runtime poller serves reads and Close
	// interrupts them.
	if err := unix.SetNonblock(fds[0], true); err != nil {
		unix.Close(fds[0])
		return nil, err
	}
	return os.NewFile(uintptr(fds[0]), string(name[:n])), nil
}

// exit records the process's end; it runs on the reaper's goroutine.
func (p *Process) exit(ws unix.WaitStatus, at time.Time) {
	p.exitCode, p.exitedAt = exitCode(ws), at
	close(p.exited)
}

// exitCode is a wait status as containerd reports it: the exit code, or
// 128 + the signal number when a signal killed the process.
func exitCode(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

func (p *Process) hasExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// wait blocks until the process exits or ctx ends.
func (p *Process) wait(ctx context.Context) (int, time.Time, error) {
	select {
	case <-p.exited:
		return p.exitCode, p.exitedAt, nil
	case <-ctx.Done():
		return 0, time.Time{}, ctx.Err()
	}
}

// signal signals an exec'd process (the init is signalled through its
// container). The process handle is a pidfd, so a reaped pid that the
// kernel reused is never hit.
func (p *Process) signal(sig unix.Signal) error {
	if p.hasExited() {
		return fmt.Errorf("process %q already finished: %w", p.execID, errdefs.ErrNotFound)
	}
	if err := p.lp.Signal(sig); err != nil {
		if errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("process %q already finished: %w", p.execID, errdefs.ErrNotFound)
		}
		return fmt.Errorf("signal process %q: %w", p.execID, err)
	}
	return nil
}

func (p *Process) writeStdin(ctx context.Context, data []byte) (int, error) {
	if !p.hasStdin {
		return 0, fmt.Errorf("process %q was created without stdin: %w", p.execID, errdefs.ErrFailedPrecondition)
	}
	p.stdinMu.Lock()
	f := p.stdin
	p.stdinMu.Unlock()
	if f == nil {
		return 0, fmt.Errorf("stdin of process %q is closed: %w", p.execID, errdefs.ErrFailedPrecondition)
	}
	if d, ok := ctx.Deadline(); ok {
		f.SetWriteDeadline(d)
		defer f.SetWriteDeadline(time.Time{})
	}
	n, err := f.Write(data)
	if err != nil {
		return n, fmt.Errorf("write stdin of process %q: %w", p.execID, err)
	}
	return n, nil
}

func (p *Process) closeStdin() error {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.stdin == nil {
		return nil
	}
	if p.terminal {
		if _, err := p.stdin.Write([]byte{veof}); err != nil {
			return fmt.Errorf("send EOF to the terminal of process %q: %w", p.execID, err)
		}
		p.stdin = nil
		return nil
	}
	err := p.stdin.Close()
	p.stdin = nil
	return err
}

func (p *Process) resize(rows, cols uint32) error {
	if p.master == nil {
		return fmt.Errorf("process %q has no terminal: %w", p.execID, errdefs.ErrFailedPrecondition)
	}
	ws := &unix.Winsize{Row: uint16(rows), Col: uint16(cols)}
	rc, err := p.master.SyscallConn()
	if err != nil {
		return err
	}
	var ioErr error
	if err := rc.Control(func(fd uintptr) { ioErr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, ws) }); err != nil {
		return err
	}
	if ioErr != nil {
		return fmt.Errorf("resize terminal of process %q: %w", p.execID, ioErr)
	}
	return nil
}

// release ends the process's streams and closes every descriptor the agent
// holds for it.
func (p *Process) release() {
	if p.stdout != nil {
		p.stdout.close()
	}
	if p.stderr != nil {
		p.stderr.close()
	}
	p.stdinMu.Lock()
	if p.stdin != nil && p.stdin != p.master {
		p.stdin.Close()
	}
	p.stdin = nil
	p.stdinMu.Unlock()
	p.closeFiles()
}

func (p *Process) closeFiles() {
	for _, f := range append(append(p.childEnds, p.sources...), p.consoleSock, p.master) {
		if f != nil {
			f.Close()
		}
	}
	if p.stdin != nil && p.stdin != p.master {
		p.stdin.Close()
		p.stdin = nil
	}
	p.childEnds, p.sources, p.consoleSock, p.master = nil, nil, nil, nil
}

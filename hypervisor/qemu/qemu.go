package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/log"

	"github.com/kasa-runtime/kasa/hypervisor"
	"github.com/kasa-runtime/kasa/hypervisor/vsock"
)

const (
	// DefaultStartTimeout bounds StartVM's wait for QMP when ctx has no deadline.
	DefaultStartTimeout = 10 * time.Second
	// DefaultStopGrace is how long StopVM waits after QMP quit before SIGKILL
	// when ctx has no deadline.
	DefaultStopGrace = 5 * time.Second
	// killWait bounds the wait for a SIGKILLed QEMU to be reaped.
	killWait = 10 * time.Second
	// exitReapWait is how long a failed start waits for QEMU's exit status.
	exitReapWait = 2 * time.Second
)

var (
	_ hypervisor.Hypervisor = (*QEMU)(nil)
	_ hypervisor.Saver      = (*QEMU)(nil)
)

// vmState is where a QEMU is in its life; operations name the transition they
// make and are refused from any other state.
type vmState int

const (
	stateNew vmState = iota
	stateCreated
	stateRunning
	statePaused
	stateStopped
)

func (s vmState) String() string {
	return [...]string{"new", "created", "running", "paused", "stopped"}[s]
}

// QEMU drives one VM. Lifecycle calls are serialised; Done, ExitError, PID,
// DialGuest and ConsolePath never wait for them.
//
// QEMU runs as a direct child of the caller in its own process group (so a
// signal to the shim's group, e.g. ^C in a terminal, does not reach it) and
// without a parent-death signal: if the shim crashes the VM keeps running,
// and the next shim or `shim delete` finds it through the pid file the
// driver writes in the state directory (or by its VMM uid) and reaps it.
// QEMU's stdout and stderr, and the guest console, reach their capped logs
// through the driver (launch.go): QEMU itself holds no writable host file.
type QEMU struct {
	mu    sync.Mutex // serialises lifecycle operations
	state vmState
	cfg   hypervisor.VMConfig
	args  []string
	paths Paths
	cmd   *exec.Cmd
	qmp   *QMP
	// vsock is the in-process vhost-user-vsock backend (TransportVhostUserVsock).
	vsock *vsock.Backend
	// lateVsock is QEMU's end of the vsock backend's socket in a clone,
	// handed over when the device is added after the restore.
	lateVsock *os.File
	// vhostVsock is the kernel's /dev/vhost-vsock with the guest's CID
	// claimed on it (TransportVsock), held from CreateVM until the VM is
	// stopped: closing it releases the CID.
	vhostVsock *os.File
	// console is the driver's end of the guest console (its output is
	// copied to the console log; a clone's Snapshot.ConsoleInput is written
	// to it).
	console net.Conn

	// logDone is closed when QEMU's output has been drained into its log.
	logDone chan struct{}

	info atomic.Pointer[vmInfo]
	pid  atomic.Int64

	done     chan struct{}
	doneOnce sync.Once
	exitErr  error // written before done is closed

	killed   atomic.Bool // StopVM had to SIGKILL
	panicked atomic.Bool // QEMU reported GUEST_PANICKED
	// vsockFailed is why the vsock backend stopped under a running QEMU,
	// which was then killed.
	vsockFailed atomic.Pointer[error]
}

// vmInfo is what the non-blocking accessors read.
type vmInfo struct {
	accel       hypervisor.Accelerator
	channel     guestChannel
	consolePath string
}

// Driver is the QEMU hypervisor.Driver.
type Driver struct{}

var _ hypervisor.Driver = Driver{}

// New returns a driver for one VM.
func (Driver) New() hypervisor.Hypervisor { return New() }

// KillOrphan is the package's KillOrphan.
func (Driver) KillOrphan(stateDir, id string, vmmUID uint32) error {
	return KillOrphan(stateDir, id, vmmUID)
}

// New returns a driver for one VM.
func New() *QEMU {
	q := &QEMU{done: make(chan struct{})}
	q.info.Store(&vmInfo{})
	return q
}

func (q *QEMU) invalidTransition(to vmState) error {
	return fmt.Errorf("qemu: invalid state transition %q to %q", q.state, to)
}

func (q *QEMU) logger(ctx context.Context) *log.Entry {
	return log.G(ctx).WithField("sandbox", q.cfg.ID)
}

// CreateVM validates cfg, resolves the accelerator (probing KVM if asked for
// "auto") and builds the command line. It starts nothing that outlives it.
func (q *QEMU) CreateVM(ctx context.Context, cfg hypervisor.VMConfig) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.state != stateNew && q.state != stateCreated {
		return q.invalidTransition(stateCreated)
	}
	logger := log.G(ctx).WithField("sandbox", cfg.ID)

	cfg, err := withImageSize(cfg)
	if err != nil {
		return fmt.Errorf("invalid VM config: %w", err)
	}
	if err := checkFiles(cfg); err != nil {
		return fmt.Errorf("invalid VM config: %w", err)
	}
	cfg = withDefaultFirmware(cfg, fileExists)
	accel, reason, err := ResolveAccelerator(ctx, cfg.Accelerator, cfg.Path)
	if err != nil {
		return err
	}
	if accel == hypervisor.AccelTCG && cfg.Accelerator != hypervisor.AccelTCG {
		logger.WithField("reason", reason).Warn("KVM is not usable, falling back to TCG software emulation: VMs will be much slower")
	} else {
		logger.WithFields(log.Fields{"accelerator": accel, "reason": reason}).Debug("accelerator chosen")
	}
	if accel == hypervisor.AccelTCG {
		cfg = withTSCRate(cfg, hostTSCkHz())
	}
	cid, err := q.claimVhostVsock(cfg)
	if err != nil {
		return err
	}
	args, err := BuildArgs(cfg, accel, cid)
	if err != nil {
		q.releaseVhostVsock()
		return err
	}

	q.cfg, q.args, q.paths = cfg, args, PathsFor(cfg.StateDir)
	q.info.Store(&vmInfo{accel: accel, channel: channelFor(cfg, q.paths, cid), consolePath: q.paths.Console})
	q.state = stateCreated
	logger.WithField("args", strings.Join(args, " ")).Debug("QEMU command line")
	return nil
}

// checkFiles validates cfg and that the files it names exist, so a typo is
// reported with the field's name before any process starts.
func checkFiles(cfg hypervisor.VMConfig) error {
	var errs []error
	if cfg.Path == "" {
		errs = append(errs, errors.New("Path is empty"))
	} else if _, err := exec.LookPath(cfg.Path); err != nil {
		errs = append(errs, fmt.Errorf("Path: %w", err))
	}
	if err := validate(cfg); err != nil {
		errs = append(errs, err)
	}
	for _, f := range []struct{ field, path string }{
		{"Kernel", cfg.Kernel}, {"Initrd", cfg.Initrd}, {"Image", cfg.Image}, {"Firmware", cfg.Firmware},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.field, err))
		}
	}
	return errors.Join(errs...)
}

// withDefaultFirmware gives the pc machine qboot when the configuration names
// no firmware and qboot is installed: it boots a kernel faster than SeaBIOS.
func withDefaultFirmware(cfg hypervisor.VMConfig, exists func(string) bool) hypervisor.VMConfig {
	if cfg.Firmware == "" && cfg.MachineType == MachinePC && exists(QbootPath) {
		cfg.Firmware = QbootPath
	}
	return cfg
}

// withImageSize fills in the size of cfg.Image when the caller left it 0.
func withImageSize(cfg hypervisor.VMConfig) (hypervisor.VMConfig, error) {
	if cfg.Image == "" || cfg.ImageSize != 0 {
		return cfg, nil
	}
	fi, err := os.Stat(cfg.Image)
	if err != nil {
		return cfg, fmt.Errorf("Image: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return cfg, fmt.Errorf("Image %s is not a regular file", cfg.Image)
	}
	cfg.ImageSize = fi.Size()
	return cfg, nil
}

// withTSCRate tells a TCG guest its TSC rate (the host's; see tsc.go) ahead
// of the configured parameters, which can still override it.
func withTSCRate(cfg hypervisor.VMConfig, khz uint64) hypervisor.VMConfig {
	if khz > 0 {
		cfg.KernelParams = append([]string{"tsc_early_khz=" + strconv.FormatUint(khz, 10)}, cfg.KernelParams...)
	}
	return cfg
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// StartVM creates the state directory, launches QEMU and returns once QMP
// answers. On error QEMU is killed and reaped, the state directory removed,
// Done closed and the VM is stopped for good.
func (q *QEMU) StartVM(ctx context.Context) (retErr error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.state != stateCreated {
		return q.invalidTransition(stateRunning)
	}
	logger := q.logger(ctx)

	var cu cleanup
	cu.add(q.releaseVhostVsock)
	defer func() {
		if retErr != nil {
			cu.run()
			q.state = stateStopped
			q.closeDone(retErr) // no-op if QEMU ran: its exit status stays
			logger.WithError(retErr).Error("VM failed to start")
		}
	}()

	dir := q.cfg.StateDir
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return fmt.Errorf("creating state directory: %w", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("state directory %s already exists; a VM with this id may still be running: %w", dir, err)
		}
		return fmt.Errorf("creating state directory: %w", err)
	}
	cu.add(func() {
		if err := os.RemoveAll(dir); err != nil {
			logger.WithError(err).Warn("removing state directory")
		}
	})

	l, err := q.launch(logger, &cu)
	if err != nil {
		return err
	}
	cmd, qmpConn := l.cmd, l.qmp
	q.cmd, q.console = cmd, l.console
	q.pid.Store(int64(cmd.Process.Pid))
	go q.wait(cmd)
	if q.vsock != nil {
		go q.watchVsock(logger, q.vsock, cmd)
	}
	cu.add(func() {
		_ = cmd.Process.Kill()
		<-q.done
	})

	dialCtx, cancel := ctx, context.CancelFunc(func() {})
	if _, ok := ctx.Deadline(); !ok {
		dialCtx, cancel = context.WithTimeout(ctx, DefaultStartTimeout)
	}
	defer cancel()
	dialCtx, cancelOnExit := context.WithCancel(dialCtx)
	defer cancelOnExit()
	go func() {
		select {
		case <-q.done:
			cancelOnExit()
		case <-dialCtx.Done():
		}
	}()
	qmp, err := NewQMP(dialCtx, qmpConn, q.eventHandler(logger))
	if err != nil {
		// A QEMU that fails to start (say, on a bad kernel) often does so
		// after creating its sockets, so the dial sees a reset first. Give
		// it a moment to be reaped: its own message is the useful error.
		reaped := func() bool {
			select {
			case <-q.done:
				return true
			default:
				return false
			}
		}
		if !reaped() && dialCtx.Err() == nil {
			select {
			case <-q.done:
			case <-time.After(exitReapWait):
			}
		}
		if reaped() {
			if q.exitErr == nil { // exited with status 0: no reason of its own
				return fmt.Errorf("starting VM: QEMU exited before it became controllable: %w", err)
			}
			return fmt.Errorf("starting VM: %w", q.exitErr)
		}
		return fmt.Errorf("QEMU did not become controllable: %w", err)
	}
	q.qmp = qmp
	cu.add(func() { qmp.Close() })
	if s := q.cfg.Snapshot; s != nil && s.Role == hypervisor.SnapshotClone {
		if err := q.restore(ctx); err != nil {
			select { // QEMU's own last words say why, when it died
			case <-q.done:
				return fmt.Errorf("%w: %v", err, q.exitErr)
			case <-time.After(exitReapWait):
				return err
			}
		}
	}

	q.state = stateRunning
	cu.release()
	logger.WithFields(log.Fields{"pid": cmd.Process.Pid, "accelerator": q.info.Load().accel, "qemu": qmp.Version()}).Info("VM started")
	return nil
}

// watchVsock kills QEMU if the vsock backend stops while QEMU runs: the
// guest keeps a device nobody serves, so the agent would be unreachable for
// good. Killing the VM makes that a VM exit every caller already handles
// (Done, ExitError) instead of calls that time out one by one.
func (q *QEMU) watchVsock(logger *log.Entry, b *vsock.Backend, cmd *exec.Cmd) {
	select {
	case <-q.done:
		return
	case <-b.Done():
	}
	err := b.Err()
	if err == nil {
		err = errors.New("vsock backend stopped")
	}
	select {
	case <-q.done: // QEMU went first; its exit is the story
		return
	default:
	}
	q.vsockFailed.Store(&err)
	logger.WithError(err).Error("vsock backend failed under a running VM; killing QEMU")
	_ = cmd.Process.Kill()
}

// wait reaps QEMU and records why it exited.
func (q *QEMU) wait(cmd *exec.Cmd) {
	err := cmd.Wait()
	select { // the log's last lines are the reason a failed QEMU gives
	case <-q.logDone:
	case <-time.After(exitReapWait):
	}
	switch {
	case q.vsockFailed.Load() != nil:
		err = fmt.Errorf("QEMU killed because its vsock backend failed: %w", *q.vsockFailed.Load())
	case err == nil && q.panicked.Load():
		err = errors.New("guest panicked")
	case err == nil:
	case q.killed.Load():
		err = fmt.Errorf("QEMU killed after the graceful quit timed out: %w", err)
	default:
		if msg := tail(q.paths.Log, 2048); msg != "" {
			err = fmt.Errorf("QEMU exited: %w: %s", err, msg)
		} else {
			err = fmt.Errorf("QEMU exited: %w", err)
		}
	}
	q.closeDone(err)
}

func (q *QEMU) closeDone(err error) {
	q.doneOnce.Do(func() {
		q.exitErr = err
		close(q.done)
	})
}

func (q *QEMU) eventHandler(logger *log.Entry) func(QMPEvent) {
	return func(ev QMPEvent) {
		l := logger.WithField("event", ev.Name)
		if len(ev.Data) > 0 {
			l = l.WithField("data", string(ev.Data))
		}
		switch ev.Name {
		case "GUEST_PANICKED":
			q.panicked.Store(true)
			l.Warn("guest panicked")
		case "SHUTDOWN":
			l.Info("VM is shutting down")
		default:
			l.Debug("QMP event")
		}
	}
}

// StopVM asks QEMU to quit, kills it if it has not exited when ctx ends (or
// after DefaultStopGrace if ctx has no deadline), reaps it and removes the
// state directory. It is idempotent, and also cleans up after a VM that
// exited by itself.
func (q *QEMU) StopVM(ctx context.Context) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	switch q.state {
	case stateStopped:
		return nil
	case stateNew, stateCreated:
		q.releaseVhostVsock()
		q.state = stateStopped
		q.closeDone(nil)
		return nil
	}
	logger := q.logger(ctx)

	select {
	case <-q.done:
		if q.exitErr == nil {
			// The guest powered itself off (DestroySandbox): the normal case.
			logger.Debug("VM had powered off before it was stopped")
			break
		}
		l := logger.WithError(q.exitErr)
		if c := tail(q.paths.Console, 2048); c != "" {
			l = l.WithField("console", c)
		}
		l.Warn("VM had exited before it was stopped")
	default:
		if err := q.shutdown(ctx, logger); err != nil {
			return err
		}
	}
	q.qmp.Close()
	if q.vsock != nil {
		q.vsock.Close()
	}
	q.releaseVhostVsock() // QEMU is gone: the guest CID is free again
	if err := os.RemoveAll(q.cfg.StateDir); err != nil {
		return fmt.Errorf("removing state directory: %w", err)
	}
	q.state = stateStopped
	if q.exitErr != nil {
		logger = logger.WithField("exit", q.exitErr.Error())
	}
	logger.Info("VM stopped")
	return nil
}

func (q *QEMU) shutdown(ctx context.Context, logger *log.Entry) error {
	graceCtx, cancel := ctx, context.CancelFunc(func() {})
	if _, ok := ctx.Deadline(); !ok {
		graceCtx, cancel = context.WithTimeout(ctx, DefaultStopGrace)
	}
	defer cancel()

	// QEMU may close the connection before its reply arrives; then Done tells.
	if _, err := q.qmp.Execute(graceCtx, "quit", nil); err != nil && !errors.Is(err, ErrQMPClosed) {
		logger.WithError(err).Warn("QMP quit failed")
	}
	select {
	case <-q.done:
		return nil
	case <-graceCtx.Done():
	}

	logger.WithField("pid", q.PID()).Warn("QEMU did not quit in time, killing it")
	q.killed.Store(true)
	if err := q.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("killing QEMU: %w", err)
	}
	select {
	case <-q.done:
		return nil
	case <-time.After(killWait):
		return fmt.Errorf("QEMU (pid %d) not reaped %v after SIGKILL", q.PID(), killWait)
	}
}

// Done is closed when QEMU has exited (or StartVM failed, or the VM was
// stopped before it started).
func (q *QEMU) Done() <-chan struct{} { return q.done }

// ExitError says why QEMU exited: nil for a clean exit (the guest powered off
// or rebooted, or StopVM's quit), else the exit status with the end of
// QEMU's own output. It is nil until Done is closed.
func (q *QEMU) ExitError() error {
	select {
	case <-q.done:
		return q.exitErr
	default:
		return nil
	}
}

// ConsolePath is the guest console log; "" before CreateVM.
func (q *QEMU) ConsolePath() string { return q.info.Load().consolePath }

// PID is QEMU's process id; 0 before StartVM.
func (q *QEMU) PID() int { return int(q.pid.Load()) }

// Accelerator is the accelerator CreateVM resolved; "" before it.
func (q *QEMU) Accelerator() hypervisor.Accelerator { return q.info.Load().accel }

// tail returns the last max bytes of the file at path, trimmed; "" if none.
func tail(path string, max int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > max {
		if _, err := f.Seek(-max, io.SeekEnd); err != nil {
			return ""
		}
	}
	b, _ := io.ReadAll(io.LimitReader(f, max))
	return strings.TrimSpace(string(b))
}

package fsshare

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/internal/parentdeath"
)

// daemonFlavor is which virtiofsd a binary is: they take different options.
type daemonFlavor int

const (
	// flavorC is QEMU's C virtiofsd (QEMU ≤ 7.2; Debian 12 ships it as
	// /usr/lib/qemu/virtiofsd): "-o source=DIR" style options.
	flavorC daemonFlavor = iota
	// flavorRust is the Rust virtiofsd 1.x: "--shared-dir=DIR" style.
	flavorRust
)

// flavors caches the flavor of each daemon binary by path and mtime.
var flavors sync.Map // string -> daemonFlavor

// flavorOf asks daemon for its help text once and tells the flavor from it.
func flavorOf(daemon string) (daemonFlavor, error) {
	fi, err := os.Stat(daemon)
	if err != nil {
		return 0, err
	}
	key := fmt.Sprintf("%s@%d", daemon, fi.ModTime().UnixNano())
	if f, ok := flavors.Load(key); ok {
		return f.(daemonFlavor), nil
	}
	out, _ := exec.Command(daemon, "--help").CombinedOutput()
	var f daemonFlavor
	switch {
	case bytes.Contains(out, []byte("--shared-dir")):
		f = flavorRust
	case bytes.Contains(out, []byte("-o source=")):
		f = flavorC
	default:
		return 0, fmt.Errorf("%s does not look like virtiofsd (its --help names neither --shared-dir nor -o source=)", daemon)
	}
	flavors.Store(key, f)
	return f, nil
}

// DescribeDaemon says which virtiofsd daemon is, for kasa check, or why
// Kasa cannot drive it.
func DescribeDaemon(daemon string) (string, error) {
	f, err := flavorOf(daemon)
	if err != nil {
		return "", err
	}
	if f == flavorRust {
		return daemon + " (Rust virtiofsd)", nil
	}
	return daemon + " (QEMU's C virtiofsd)", nil
}

// listenFD is the descriptor number of the listening socket in virtiofsd.
const listenFD = 3

// VirtioFSDArgs is the command line of a virtiofsd of the given flavor
// serving dir on the listening socket it inherits as fd 3: submounts (each
// container's rootfs, each volume) are announced so the guest sees them as
// separate mounts, and the daemon sandboxes itself (its own mount, pid and
// network namespaces, pivot_root into dir, seccomp, a reduced capability
// set), whether it runs as root or as root of a user namespace only
// (userns.go).
func VirtioFSDArgs(f daemonFlavor, dir string) []string {
	fd := fmt.Sprintf("--fd=%d", listenFD)
	if f == flavorRust {
		return []string{
			fd,
			"--shared-dir=" + dir,
			"--cache=auto",
			"--announce-submounts",
			"--sandbox=namespace",
			"--thread-pool-size=1",
		}
	}
	return []string{
		fd,
		"-o", "source=" + dir,
		"-o", "cache=auto",
		"-o", "announce_submounts",
		"-o", "sandbox=namespace",
		"--thread-pool-size=1",
	}
}

// Daemon is a running virtiofsd.
type Daemon struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// StartVirtioFSD starts daemon serving the share on a socket the shim binds
// at socket (in a directory only root can reach) and hands over as an open
// descriptor, then connects to it. The connection is for the hypervisor,
// which so never needs to reach the socket's directory; the caller closes
// its copy once the hypervisor has one. The daemon exits with its parent if
// the shim dies.
//
// idFirst, if not 0, runs the daemon without root, as root of a user
// namespace of its own mapping ids 0..IDRangeSize-1 to host ids idFirst..
// (userns.go); every root filesystem and volume mounted in the share from
// then on is idmapped into that namespace (idmap.go). 0 runs it as root.
//
// place, if not nil, is called with the daemon's pid the moment it starts
// (the pod's cgroup: podcgroup.Group.Add); its error fails the start.
func (s *Share) StartVirtioFSD(ctx context.Context, daemon, socket string, idFirst uint32, place func(pid int) error) (_ *Daemon, conn *os.File, retErr error) {
	flavor, err := flavorOf(daemon)
	if err != nil {
		return nil, nil, fmt.Errorf("start virtiofsd: %w", err)
	}
	// Mounts made in the share after the daemon started (each container's
	// rootfs and volumes) must reach the daemon's own mount namespace.
	if err := s.makeShared(); err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(filepath.Dir(socket), 0o700); err != nil {
		return nil, nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		return nil, nil, fmt.Errorf("virtiofsd socket: %w", err)
	}
	defer ln.Close() // the daemon has its own copy
	lnFile, err := ln.File()
	if err != nil {
		return nil, nil, err
	}
	defer lnFile.Close()

	source, extra := s.HostDir, []string(nil)
	if idFirst != 0 {
		if source, err = s.openDoor(idFirst); err != nil {
			return nil, nil, err
		}
		extra = append(extra, nofileArg())
	}
	cmd := exec.Command(daemon, append(VirtioFSDArgs(flavor, source), extra...)...)
	cmd.ExtraFiles = []*os.File{lnFile}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if idFirst != 0 {
		inUserns(cmd.SysProcAttr, idFirst)
	}
	logPath := socket + ".log"
	out, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, nil, err
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	if err := parentdeath.Start(cmd); err != nil { // dies with the shim, whichever thread started it
		return nil, nil, fmt.Errorf("start virtiofsd %s: %w", daemon, err)
	}
	d := &Daemon{cmd: cmd, log: logPath, done: make(chan struct{})}
	var userns *os.File
	if idFirst != 0 { // before Wait, so the pid cannot be another's
		userns, err = openUserns(cmd.Process.Pid)
	}
	go func() { cmd.Wait(); close(d.done) }()
	defer func() {
		if retErr != nil {
			d.Stop()
			if userns != nil {
				userns.Close()
			}
		}
	}()
	if err != nil {
		return nil, nil, err
	}
	if place != nil {
		if err := place(cmd.Process.Pid); err != nil {
			return nil, nil, err
		}
	}

	// The kernel completes the connection from the listen backlog; the
	// daemon accepts it when it is ready.
	c, err := (&net.Dialer{}).DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to virtiofsd: %w", err)
	}
	defer c.Close()
	if conn, err = c.(*net.UnixConn).File(); err != nil {
		return nil, nil, err
	}
	s.userns, s.usernsRoot = userns, idFirst
	s.mu.Lock()
	s.daemonPID = cmd.Process.Pid
	s.mu.Unlock()
	return d, conn, nil
}

// PID is the daemon's process id.
func (d *Daemon) PID() int { return d.cmd.Process.Pid }

// Done is closed when the daemon has exited.
func (d *Daemon) Done() <-chan struct{} { return d.done }

// ExitError says how the daemon ended, with the end of its own output; nil
// while it runs.
func (d *Daemon) ExitError() error {
	if d == nil {
		return nil
	}
	select {
	case <-d.done:
	default:
		return nil
	}
	b, _ := os.ReadFile(d.log)
	if len(b) > 2048 {
		b = b[len(b)-2048:]
	}
	return fmt.Errorf("virtiofsd exited (%v): %s", d.cmd.ProcessState, bytes.TrimSpace(b))
}

// Stop kills the daemon and waits for it. It is idempotent.
func (d *Daemon) Stop() error {
	if d == nil {
		return nil
	}
	select {
	case <-d.done:
		return nil
	default:
	}
	if err := d.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	<-d.done
	return nil
}

// GuestStorageVirtioFS is how the agent mounts the share over virtio-fs.
func (s *Share) GuestStorageVirtioFS() *api.Storage {
	return &api.Storage{
		Driver:     api.StorageDriver_STORAGE_DRIVER_VIRTIOFS,
		Source:     MountTag,
		Fstype:     "virtiofs",
		Options:    []string{"nodev"},
		MountPoint: GuestRoot,
	}
}

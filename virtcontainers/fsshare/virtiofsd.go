package fsshare

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/kasa-runtime/kasa/agent/api"
)

// virtiofsdStartTimeout bounds the wait for virtiofsd's socket.
const virtiofsdStartTimeout = 10 * time.Second

// VirtioFSDArgs is the command line of virtiofsd (the Rust daemon, 1.x)
// serving dir on socket: submounts (each container's rootfs) are announced
// so the guest sees them as separate mounts, and the guest page cache is
// used as the daemon's cache policy allows.
func VirtioFSDArgs(socket, dir string) []string {
	return []string{
		"--socket-path=" + socket,
		"--shared-dir=" + dir,
		"--cache=auto",
		"--announce-submounts",
		"--sandbox=none",
		"--thread-pool-size=1",
	}
}

// Daemon is a running virtiofsd.
type Daemon struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// StartVirtioFSD starts daemon for the share and returns once its vhost-user
// socket exists. The daemon exits with its parent if the shim dies.
func (s *Share) StartVirtioFSD(ctx context.Context, daemon, socket string) (*Daemon, error) {
	if err := os.MkdirAll(filepath.Dir(socket), 0o700); err != nil {
		return nil, err
	}
	cmd := exec.Command(daemon, VirtioFSDArgs(socket, s.HostDir)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	out, err := os.Create(socket + ".log")
	if err != nil {
		return nil, err
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start virtiofsd %s: %w", daemon, err)
	}
	d := &Daemon{cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); close(d.done) }()
	deadline := time.Now().Add(virtiofsdStartTimeout)
	for {
		if _, err := os.Stat(socket); err == nil {
			return d, nil
		}
		select {
		case <-d.done:
			log, _ := os.ReadFile(socket + ".log")
			return nil, fmt.Errorf("virtiofsd %s exited before serving %s: %v: %s", daemon, socket, cmd.ProcessState, log)
		case <-ctx.Done():
			d.Stop()
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.Stop()
			return nil, fmt.Errorf("virtiofsd %s did not create %s within %v", daemon, socket, virtiofsdStartTimeout)
		}
	}
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

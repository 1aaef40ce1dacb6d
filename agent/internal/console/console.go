// Package console is the agent's debug console: each vsock stream the host
// opens on api.DebugConsoleVsockPort gets a shell on a pty of its own. The
// agent serves it only when the VM was booted with api.DebugConsoleParam,
// which the host sets for agent.kata.debug_console_enabled. The wire format
// is agent/api/console.md.
package console

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/containerd/console"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/agent/internal/accept"
)

const (
	// MaxSessions bounds the shells running at once; a further stream is
	// closed at once.
	MaxSessions = 4
	// headerTimeout bounds reading the header after the stream opens.
	headerTimeout = 10 * time.Second
	// hangupWait is how long a shell has to exit after SIGHUP, when its
	// stream ended, before it is killed.
	hangupWait = 2 * time.Second
	// eofEvery paces the ^D that end a piped session (endInput).
	eofEvery = 500 * time.Millisecond
)

// Shell is the command a session runs: the initramfs's busybox as sh.
var Shell = []string{"/bin/sh", "-l"}

// Spawner starts a child with reaping suspended and hands its exit status
// to exited (pid1.Reaper; the shell is then not taken by the reaper).
type Spawner interface {
	Spawn(start func() (pid int, err error), exited func(unix.WaitStatus, time.Time)) error
}

// Server serves console streams.
type Server struct {
	spawner Spawner
}

// New returns a server that starts shells through spawner.
func New(spawner Spawner) *Server {
	return &Server{spawner: spawner}
}

// Serve handles l's streams, at most MaxSessions at once, until l is
// closed, then waits for them.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	return accept.Serve(ctx, l, "debug console", MaxSessions, func(c net.Conn) {
		if err := s.session(ctx, c); err != nil {
			log.G(ctx).WithError(err).Warn("debug console session")
		}
	}, func(c net.Conn) {
		log.G(ctx).Warnf("debug console: %d sessions already open, refusing another", MaxSessions)
		c.Close()
	})
}

// session runs one shell for stream c and ends when the shell has exited
// and its output is sent, or when the stream ends (the shell is then hung
// up, and killed if it lingers).
func (s *Server) session(ctx context.Context, c net.Conn) error {
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(headerTimeout))
	hdr := make([]byte, api.ConsoleHeaderSize)
	if _, err := io.ReadFull(c, hdr); err != nil {
		return err
	}
	if err := api.CheckConsoleHeader(hdr); err != nil {
		return err
	}
	c.SetReadDeadline(time.Time{})

	pty, slavePath, err := console.NewPty()
	if err != nil {
		return err
	}
	defer pty.Close()
	slave, err := os.OpenFile(slavePath, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return err
	}
	exited := make(chan struct{})
	var pid int
	err = s.spawner.Spawn(func() (int, error) {
		cmd := exec.Command(Shell[0], Shell[1:]...)
		cmd.Dir = "/"
		cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/", "TERM=linux", "PS1=kasa-debug# "}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
		if err := cmd.Start(); err != nil {
			return 0, err
		}
		pid = cmd.Process.Pid
		return pid, nil
	}, func(unix.WaitStatus, time.Time) { close(exited) })
	slave.Close()
	if err != nil {
		return err
	}
	log.G(ctx).WithField("pid", pid).Info("debug console: shell started")

	// Output: the pty to the stream. Reading the master ends with EIO once
	// the shell and everything holding the slave are gone.
	outDone := make(chan struct{})
	go func() {
		defer close(outDone)
		io.Copy(c, pty)
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	}()
	// Input: frames from the stream to the pty.
	inDone := make(chan error, 1)
	go func() { inDone <- copyInput(pty, c) }()

	select {
	case <-exited:
	case err := <-inDone:
		if err != nil && !errors.Is(err, io.EOF) {
			log.G(ctx).WithError(err).Warn("debug console: input")
		}
		if err == nil || errors.Is(err, io.EOF) {
			endInput(pty, exited, outDone)
		}
	}
	select {
	case <-exited:
	default:
		unix.Kill(-pid, unix.SIGHUP)
		select {
		case <-exited:
		case <-time.After(hangupWait):
			unix.Kill(-pid, unix.SIGKILL)
			<-exited
		}
	}
	// The shell's group may leave background children holding the slave;
	// the session does not wait for them.
	unix.Kill(-pid, unix.SIGHUP)
	select {
	case <-outDone:
	case <-time.After(hangupWait):
	}
	log.G(ctx).WithField("pid", pid).Info("debug console: shell ended")
	return nil
}

// endInput ends the shell's input after the client's ended (a pipe, not a
// terminal) as a terminal user would, with ^D, until the shell exits. It
// repeats: a ^D typed while the shell starts or runs a command reaches the
// command or is lost in a change of terminal mode, and only one typed at
// the prompt ends the shell.
func endInput(pty console.Console, exited, outDone <-chan struct{}) {
	tick := time.NewTicker(eofEvery)
	defer tick.Stop()
	for {
		if _, err := pty.Write([]byte{4}); err != nil {
			return
		}
		select {
		case <-exited:
			return
		case <-outDone:
			return
		case <-tick.C:
		}
	}
}

// copyInput writes data frames to the pty and applies resizes until the
// stream ends or sends a bad frame.
func copyInput(pty console.Console, r io.Reader) error {
	buf := make([]byte, api.MaxConsoleFramePayload)
	for {
		f, err := api.ReadConsoleFrame(r, buf)
		if err != nil {
			return err
		}
		switch f.Type {
		case api.ConsoleData:
			if _, err := pty.Write(f.Payload); err != nil {
				return err
			}
		case api.ConsoleResize:
			rows, cols := f.Size()
			if rows > 0 && cols > 0 {
				pty.Resize(console.WinSize{Height: rows, Width: cols})
			}
		}
	}
}

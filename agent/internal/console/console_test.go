package console

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/agent/api"
)

// waitSpawner starts and waits for its child itself, as pid1.Reaper would
// hand over the status.
type waitSpawner struct{}

func (waitSpawner) Spawn(start func() (int, error), exited func(unix.WaitStatus, time.Time)) error {
	pid, err := start()
	if err != nil {
		return err
	}
	go func() {
		var ws unix.WaitStatus
		for {
			if _, err := unix.Wait4(pid, &ws, 0, nil); err != unix.EINTR {
				break
			}
		}
		exited(ws, time.Now())
	}()
	return nil
}

// session serves one console on a unix socket and returns the client end.
func session(t *testing.T) *net.UnixConn {
	t.Helper()
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("needs /bin/busybox (busybox-static)")
	}
	old := Shell
	Shell = []string{"/bin/busybox", "sh"}
	t.Cleanup(func() { Shell = old })
	path := filepath.Join(t.TempDir(), "console.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { New(waitSpawner{}).Serve(context.Background(), l); close(done) }()
	t.Cleanup(func() { l.Close(); <-done })
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(api.ConsoleHeader()); err != nil {
		t.Fatal(err)
	}
	return c.(*net.UnixConn)
}

// TestShellOnAPty: the shell's terminal is a pty of the size the client
// sends, and it ends the stream when it exits.
func TestShellOnAPty(t *testing.T) {
	c := session(t)
	api.WriteConsoleResize(c, 33, 99)
	api.WriteConsoleData(c, []byte("stty size; tty; exit\n"))
	out, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.ReplaceAll(string(out), "\r", "")
	if !strings.Contains(s, "\n33 99\n") || !strings.Contains(s, "\n/dev/pts/") {
		t.Errorf("want the pty's size 33 99 and a /dev/pts tty in:\n%s", s)
	}
}

// TestEndOfInputEndsTheShell: a client whose input ends (a pipe) gets the
// output of what it sent, and then the end of the stream.
func TestEndOfInputEndsTheShell(t *testing.T) {
	c := session(t)
	api.WriteConsoleData(c, []byte("echo from-the-pipe\n"))
	c.CloseWrite()
	out, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "\nfrom-the-pipe") {
		t.Errorf("output:\n%s", out)
	}
}

func TestBadFrameEndsTheSession(t *testing.T) {
	c := session(t) // a good header; then a frame of no known type
	c.Write([]byte{'X', 0, 0})
	if _, err := io.ReadAll(c); err != nil {
		t.Fatal(err) // closed, not hung: ReadAll returns at EOF
	}
}

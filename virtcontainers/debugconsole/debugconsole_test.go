package debugconsole

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// guestEcho stands in for the guest's console port: it echoes, and
// half-closes after the client's input ended.
func guestEcho(t *testing.T) (func(ctx context.Context) (net.Conn, error), func() int) {
	t.Helper()
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "guest.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var dials atomic.Int32
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				io.Copy(c, c)
				c.(*net.UnixConn).CloseWrite()
			}()
		}
	}()
	return func(ctx context.Context) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, "unix", l.Addr().String())
	}, func() int { return int(dials.Load()) }
}

func TestBridgeRelaysWithHalfClose(t *testing.T) {
	dial, _ := guestEcho(t)
	path := filepath.Join(t.TempDir(), "console.sock")
	b, err := Listen(path, dial, logrus.NewEntry(logrus.New()))
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v, %v: want mode 0600", fi.Mode(), err)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte("hello guest"))
	c.(*net.UnixConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "hello guest" {
		t.Errorf("relayed %q, %v", got, err)
	}
	c.Close()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left after Close: %v", err)
	}
}

func TestBridgeCloseEndsSessions(t *testing.T) {
	dial, dials := guestEcho(t)
	path := filepath.Join(t.TempDir(), "console.sock")
	b, err := Listen(path, dial, logrus.NewEntry(logrus.New()))
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte("x"))
	buf := make([]byte, 1)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	b.Close() // returns only once the session has ended
	if _, err := c.Read(buf); err == nil {
		t.Error("session still open after Close")
	}
	if dials() != 1 {
		t.Errorf("%d guest dials", dials())
	}
}

func TestBridgeSaysWhenTheGuestIsUnreachable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.sock")
	dial := func(context.Context) (net.Conn, error) { return nil, errors.New("connection reset") }
	b, err := Listen(path, dial, logrus.NewEntry(logrus.New()))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	got, _ := io.ReadAll(c)
	if !strings.Contains(string(got), "debug console (vsock port 1027) is not reachable: connection reset") {
		t.Errorf("client read %q", got)
	}
}

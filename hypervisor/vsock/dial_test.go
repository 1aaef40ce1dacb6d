package vsock

import (
	"bufio"
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// listen returns a Unix listener closed when the test ends, and its path.
func listen(t *testing.T) (net.Listener, string) {
	path := filepath.Join(t.TempDir(), "hv.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln, path
}

func TestDialHybridHandshake(t *testing.T) {
	ln, path := listen(t)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r := bufio.NewReader(c)
			line, _ := r.ReadString('\n')
			switch line {
			case "CONNECT 1024\n":
				c.Write([]byte("OK 3000\nhello"))
			case "CONNECT 7\n":
				c.Write([]byte(strings.Repeat("O", 100)))
			default:
				c.Write([]byte("NO\n"))
			}
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := DialHybrid(ctx, path, 1024)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := c.Read(buf); err != nil || string(buf) != "hello" {
		t.Fatalf("stream after handshake = %q, %v (bytes after OK must stay in the stream)", buf, err)
	}
	c.Close()
	if _, err := DialHybrid(ctx, path, 9); err == nil || !strings.Contains(err.Error(), `"NO"`) {
		t.Fatalf("refused port: %v", err)
	}
	if _, err := DialHybrid(ctx, path, 7); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Fatalf("overlong answer: %v", err)
	}
	if _, err := DialHybrid(ctx, filepath.Join(t.TempDir(), "none.sock"), 1024); err == nil {
		t.Fatal("dial of a missing socket succeeded")
	}
}

// A cancelled context ends a handshake the other side never answers.
func TestDialHybridCancelled(t *testing.T) {
	ln, path := listen(t)
	silent := make(chan struct{}) // the other side holds the stream open until the test ends
	defer close(silent)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			<-silent
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	if _, err := DialHybrid(ctx, path, 1024); err == nil {
		t.Fatal("handshake succeeded")
	}
}

package vsockecho

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
)

func TestPortFromCmdline(t *testing.T) {
	for _, tc := range []struct {
		cmdline string
		want    uint32
		err     bool
	}{
		{"console=ttyS0 quiet", 0, false},
		{"console=ttyS0 kasa.vsock_echo=1025 quiet", 1025, false},
		{"kasa.vsock_echo=x", 0, true},
		{"kasa.vsock_echo=0", 0, true},
	} {
		got, err := PortFromCmdline(tc.cmdline)
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("%q: %d, %v", tc.cmdline, got, err)
		}
	}
}

// The modes over a unix socket standing in for vsock.
func TestModes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "echo.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go Serve(context.Background(), l)
	dial := func(mode byte) *net.UnixConn {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte{mode})
		return c.(*net.UnixConn)
	}

	c := dial('e')
	c.Write([]byte("hello"))
	c.CloseWrite()
	if b, _ := io.ReadAll(c); string(b) != "hello" {
		t.Errorf("echo: %q", b)
	}

	c = dial('s')
	c.Write([]byte("data"))
	c.CloseWrite()
	b, _ := io.ReadAll(c)
	sum := sha256.Sum256([]byte("data"))
	if len(b) != 40 || binary.LittleEndian.Uint64(b) != 4 || !bytes.Equal(b[8:], sum[:]) {
		t.Errorf("sink: %x", b)
	}

	c = dial('d')
	c.Write(make([]byte, 3000))
	c.CloseWrite()
	if b, _ := io.ReadAll(c); len(b) != 8 || binary.LittleEndian.Uint64(b) != 3000 {
		t.Errorf("discard: %x", b)
	}

	c = dial('g')
	c.Write(binary.LittleEndian.AppendUint64(nil, 100000))
	got, _ := io.ReadAll(c)
	want, _ := io.ReadAll(Stream(100000))
	if !bytes.Equal(got, want) || len(got) != 100000 {
		t.Errorf("generate: %d bytes", len(got))
	}

	c = dial('t')
	if b, _ := io.ReadAll(c); !strings.HasPrefix(string(b), "streams=5 open=1 eof=4 errors=0") {
		t.Errorf("stats: %q", b)
	}
}

package client

import (
	"bufio"
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/ttrpc"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/agent/internal/server"
	"github.com/kasa-runtime/kasa/agent/serialmux"
)

// serveAgent runs the real agent service behind a unix socket, with the
// socket's first accepted connection standing in for the guest's serial port.
func serveAgent(t *testing.T, powerOff func(string)) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	api.RegisterAgentServiceService(srv, server.New(powerOff))
	go func() {
		port, err := ln.Accept()
		if err != nil {
			return
		}
		srv.Serve(context.Background(), serialmux.Listen(port, "test-port"))
	}()
	t.Cleanup(func() { srv.Close(); ln.Close() })
	return "serial://" + path
}

func TestClientAgainstRealService(t *testing.T) {
	var powerOffs atomic.Int32
	addr := serveAgent(t, func(string) { powerOffs.Add(1) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	if err := c.Check(ctx); err != nil {
		t.Fatalf("Check: %v", err)
	}
	v, err := c.Version(ctx)
	if err != nil || v.GetApiVersion() != api.APIVersion {
		t.Fatalf("Version = %v, %v", v, err)
	}
	d, err := c.GuestDetails(ctx)
	if err != nil || d.GetKernelRelease() == "" || d.GetMemTotalBytes() == 0 || d.GetOnlineCpus() == 0 {
		t.Fatalf("GuestDetails = %v, %v", d, err)
	}
	// Bad input is an InvalidArgument on the wire and errdefs on this side.
	if _, err := c.api.SetGuestDateTime(ctx, &api.SetGuestDateTimeRequest{}); !errdefs.IsInvalidArgument(errdefs.FromGRPC(err)) {
		t.Fatalf("SetGuestDateTime without a time: %v, want InvalidArgument", err)
	}
	if m, err := c.GuestMetrics(ctx); err != nil || !strings.Contains(m, api.GuestMemoryTotalBytes+" ") {
		t.Fatalf("GuestMetrics = %q, %v; want %s", m, err, api.GuestMemoryTotalBytes)
	}
	// RPCs of later capabilities are NotImplemented, never a hang or a fake success.
	_, err = c.api.OnlineCPUMem(ctx, &api.OnlineCPUMemRequest{})
	if err := wrap("OnlineCPUMem", err); !errdefs.IsNotImplemented(err) || !strings.Contains(err.Error(), "OnlineCPUMem") {
		t.Fatalf("OnlineCPUMem: %v, want NotImplemented naming the RPC", err)
	}
	for i := 0; i < 2; i++ {
		if err := c.DestroySandbox(ctx); err != nil {
			t.Fatalf("DestroySandbox: %v", err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for powerOffs.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := powerOffs.Load(); n != 1 {
		t.Fatalf("power-off ran %d times, want once", n)
	}
}

func TestHybridVsockHandshake(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hv.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r := bufio.NewReader(c)
			line, _ := r.ReadString('\n')
			if line == "CONNECT 1024\n" {
				c.Write([]byte("OK 3000\nhello"))
			} else {
				c.Write([]byte("NO\n"))
			}
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := dial(ctx, "hvsock://"+path+":1024")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := c.Read(buf); err != nil || string(buf) != "hello" {
		t.Fatalf("stream after handshake = %q, %v (bytes after OK must stay in the stream)", buf, err)
	}
	c.Close()
	// One attempt, so that the error is the refusal and not whichever retry
	// a deadline happened to cut short (a 300 ms deadline here failed CI
	// under load).
	if _, err := dialHybridVsock(ctx, path, 9); err == nil || !strings.Contains(err.Error(), `"NO"`) {
		t.Fatalf("refused port: %v", err)
	}
}

func TestBadAddresses(t *testing.T) {
	ctx := context.Background()
	for _, addr := range []string{"agent.sock", "tcp://1.2.3.4:1024", "hvsock:///x", "vsock://abc:1024"} {
		if _, err := dial(ctx, addr); err == nil || !strings.Contains(err.Error(), addr) {
			t.Errorf("dial(%q) = %v, want an error naming the address", addr, err)
		}
	}
}

package client

import (
	"context"
	"errors"
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
// socket's first accepted connection standing in for the guest's serial
// port; it returns the dial function for it.
func serveAgent(t *testing.T, powerOff func(string)) DialFunc {
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
	return func(ctx context.Context) (net.Conn, error) { return serialmux.Dial(ctx, path) }
}

func TestClientAgainstRealService(t *testing.T) {
	var powerOffs atomic.Int32
	dial := serveAgent(t, func(string) { powerOffs.Add(1) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Connect(ctx, dial)
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

// Connect retries a dial that fails (a guest still booting) until it
// succeeds, and gives up when ctx ends, with the last error.
func TestConnectRetries(t *testing.T) {
	dial := serveAgent(t, func(string) {})
	var attempts atomic.Int32
	flaky := func(ctx context.Context) (net.Conn, error) {
		if attempts.Add(1) < 4 {
			return nil, errors.New("connection refused by a booting guest")
		}
		return dial(ctx)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Connect(ctx, flaky)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if n := attempts.Load(); n != 4 {
		t.Errorf("%d dial attempts, want 4", n)
	}
	if err := c.Check(ctx); err != nil {
		t.Fatalf("Check: %v", err)
	}

	short, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel2()
	_, err = Connect(short, func(context.Context) (net.Conn, error) { return nil, errors.New("no such socket") })
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "no such socket") {
		t.Fatalf("Connect past its deadline: %v, want DeadlineExceeded with the last error", err)
	}
}

package server

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/agent/client"
	"github.com/kasa-runtime/kasa/agent/internal/sandbox"
	"github.com/kasa-runtime/kasa/agent/serialmux"
)

// dialService serves s on a unix socket standing in for the guest's serial
// port and returns the host's client for it.
func dialService(t *testing.T, s *Service) *client.Client {
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
	api.RegisterAgentServiceService(srv, s)
	go func() {
		port, err := ln.Accept()
		if err != nil {
			return
		}
		srv.Serve(context.Background(), serialmux.Listen(port, "test-port"))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Connect(ctx, func(ctx context.Context) (net.Conn, error) { return serialmux.Dial(ctx, path) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); srv.Close(); ln.Close() })
	return c
}

// Errors cross the wire as their categories, and CopyFile writes where the
// host may write.
func TestServiceOverTTRPC(t *testing.T) {
	root := filepath.Join(t.TempDir(), "kasa")
	s := New(func(string) {}, WithCopyTarget(sandbox.CopyTarget{Root: root}))
	c := dialService(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	path := filepath.Join(root, "sb/hosts")
	err := c.CopyFile(ctx, &api.CopyFileRequest{
		Path: path, FileMode: unix.S_IFREG | 0o644, DirMode: 0o755, Data: []byte("127.0.0.1 localhost\n"), FileSize: 20,
		Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid()),
	})
	if err != nil {
		t.Fatalf("CopyFile: %v", err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "127.0.0.1 localhost\n" {
		t.Fatalf("copied file %q %v", b, err)
	}
	if err := c.CopyFile(ctx, &api.CopyFileRequest{Path: "/etc/hosts", Data: []byte("x"), FileSize: 1}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("CopyFile outside: %v, want InvalidArgument", err)
	}

	spec, _ := json.Marshal(map[string]any{"root": map[string]any{"path": "/rootfs"}, "process": map[string]any{"args": []string{"true"}, "cwd": "/"}})
	for name, tc := range map[string]struct {
		err   error
		check func(error) bool
	}{
		"malformed spec": {c.CreateContainer(ctx, &api.CreateContainerRequest{ContainerId: "c1", OciSpecJson: []byte("[")}), errdefs.IsInvalidArgument},
		"no reaper":      {c.CreateContainer(ctx, &api.CreateContainerRequest{ContainerId: "c1", OciSpecJson: spec}), errdefs.IsUnavailable},
		"start":          {c.StartContainer(ctx, "ghost"), errdefs.IsNotFound},
		"remove":         {c.RemoveContainer(ctx, "ghost", 1), errdefs.IsNotFound},
		"signal":         {c.SignalProcess(ctx, "ghost", "", 15, false), errdefs.IsNotFound},
		"pause":          {c.PauseContainer(ctx, "ghost"), errdefs.IsNotFound},
		"close stdin":    {c.CloseStdin(ctx, "ghost", "e1"), errdefs.IsNotFound},
		"resize":         {c.TtyWinResize(ctx, "ghost", "", 24, 80), errdefs.IsNotFound},
		"update":         {c.UpdateContainer(ctx, "ghost", &api.LinuxResources{}), errdefs.IsNotFound},
	} {
		if !tc.check(tc.err) {
			t.Errorf("%s: %v", name, tc.err)
		}
	}
	if _, _, err := c.ReadStdout(ctx, "ghost", "", 0); !errdefs.IsNotFound(err) {
		t.Errorf("ReadStdout: %v, want NotFound", err)
	}
	if _, err := c.WaitProcess(ctx, "ghost", ""); !errdefs.IsNotFound(err) {
		t.Errorf("WaitProcess: %v, want NotFound", err)
	}
	// GetOOMEvent long-polls until the caller gives up.
	short, cancel2 := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel2()
	start := time.Now()
	if id, err := c.GetOOMEvent(short); err == nil || time.Since(start) < 80*time.Millisecond {
		t.Errorf("GetOOMEvent with nothing to report: %q, %v after %s; want it to wait out the deadline", id, err, time.Since(start))
	}
}

package client_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/kasa-runtime/kasa/agent/agenttest"
	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/agent/client"
)

func dialFake(t *testing.T) (*agenttest.Agent, *client.Client) {
	t.Helper()
	a := agenttest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Connect(ctx, a.Dial)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return a, c
}

// Lengths in replies are checked against what was asked: a guest cannot
// claim more was written than was sent, nor send more than was asked for.
func TestClientRejectsOversizedReplies(t *testing.T) {
	a, c := dialFake(t)
	ctx := context.Background()
	a.Handle("WriteStdin", func(_ context.Context, req proto.Message) (proto.Message, error) {
		return &api.WriteStdinResponse{Len: uint32(len(req.(*api.WriteStdinRequest).GetData()) + 1)}, nil
	})
	if n, err := c.WriteStdin(ctx, "c", "e", []byte("abc")); !errors.Is(err, client.ErrBadReply) || n != 0 {
		t.Errorf("WriteStdin with Len > sent: %d, %v; want ErrBadReply", n, err)
	}
	a.Handle("ReadStdout", func(_ context.Context, req proto.Message) (proto.Message, error) {
		max := req.(*api.ReadStreamRequest).GetMaxLen()
		if max == 0 {
			max = client.MaxReadLen
		}
		return &api.ReadStreamResponse{Data: bytes.Repeat([]byte("x"), int(max)+1)}, nil
	})
	for _, max := range []uint32{0, 1, 4096} {
		if data, _, err := c.ReadStdout(ctx, "c", "e", max); !errors.Is(err, client.ErrBadReply) || data != nil {
			t.Errorf("ReadStdout(max %d) with a longer reply: %d bytes, %v; want ErrBadReply", max, len(data), err)
		}
	}
	a.Handle("ReadStderr", func(context.Context, proto.Message) (proto.Message, error) {
		return &api.ReadStreamResponse{Data: []byte("ok"), Eof: true}, nil
	})
	if data, eof, err := c.ReadStderr(ctx, "c", "e", 2); err != nil || string(data) != "ok" || !eof {
		t.Errorf("ReadStderr within bounds: %q %v %v", data, eof, err)
	}
}

// A silent agent holds no caller past its deadline, and the long polls end
// with their context.
func TestClientDeadlinesAgainstSilentAgent(t *testing.T) {
	a, c := dialFake(t)
	c.SetTimeouts(client.Timeouts{Call: 200 * time.Millisecond, Start: 200 * time.Millisecond, Signal: 200 * time.Millisecond})
	a.SetSilent(true)
	ctx := context.Background() // no deadline of its own
	calls := map[string]func() error{
		"Check":            func() error { return c.Check(ctx) },
		"Version":          func() error { _, err := c.Version(ctx); return err },
		"SetGuestDateTime": func() error { return c.SetGuestDateTime(ctx, time.Now()) },
		"DestroySandbox":   func() error { return c.DestroySandbox(ctx) },
		"CreateSandbox":    func() error { return c.CreateSandbox(ctx, &api.CreateSandboxRequest{}) },
		"CreateContainer":  func() error { return c.CreateContainer(ctx, &api.CreateContainerRequest{}) },
		"StartContainer":   func() error { return c.StartContainer(ctx, "c") },
		"RemoveContainer":  func() error { return c.RemoveContainer(ctx, "c", 0) },
		"ExecProcess":      func() error { return c.ExecProcess(ctx, &api.ExecProcessRequest{}) },
		"SignalProcess":    func() error { return c.SignalProcess(ctx, "c", "", 9, false) },
		"RemoveProcess":    func() error { return c.RemoveProcess(ctx, "c", "e") },
		"ListProcesses":    func() error { _, err := c.ListProcesses(ctx, "c"); return err },
		"UpdateContainer":  func() error { return c.UpdateContainer(ctx, "c", nil) },
		"StatsContainer":   func() error { _, err := c.StatsContainer(ctx, "c"); return err },
		"PauseContainer":   func() error { return c.PauseContainer(ctx, "c") },
		"ResumeContainer":  func() error { return c.ResumeContainer(ctx, "c") },
		"CloseStdin":       func() error { return c.CloseStdin(ctx, "c", "e") },
		"TtyWinResize":     func() error { return c.TtyWinResize(ctx, "c", "e", 1, 1) },
		"CopyFile":         func() error { return c.CopyFile(ctx, &api.CopyFileRequest{}) },
		"UpdateInterface":  func() error { _, err := c.UpdateInterface(ctx, &api.Interface{}); return err },
		"ListInterfaces":   func() error { _, err := c.ListInterfaces(ctx); return err },
		"UpdateRoutes":     func() error { _, err := c.UpdateRoutes(ctx, nil); return err },
		"ListRoutes":       func() error { _, err := c.ListRoutes(ctx); return err },
		"AddARPNeighbors":  func() error { return c.AddARPNeighbors(ctx, nil) },
	}
	for name, call := range calls {
		done := make(chan error, 1)
		go func() { done <- call() }()
		select {
		case err := <-done:
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("%s against a silent agent: %v, want a deadline error", name, err)
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("%s against a silent agent did not return within 60 s", name)
		}
	}
	// The long polls have no deadline of their own; their context ends them.
	lctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 5)
	go func() { _, err := c.WaitProcess(lctx, "c", "e"); done <- err }()
	go func() { _, _, err := c.ReadStdout(lctx, "c", "e", 0); done <- err }()
	go func() { _, _, err := c.ReadStderr(lctx, "c", "e", 0); done <- err }()
	go func() { _, err := c.WriteStdin(lctx, "c", "e", []byte("x")); done <- err }()
	go func() { _, err := c.GetOOMEvent(lctx); done <- err }()
	time.Sleep(300 * time.Millisecond) // past the Call timeout: they still wait
	select {
	case err := <-done:
		t.Fatalf("a long poll ended on its own: %v", err)
	default:
	}
	cancel()
	for i := 0; i < 5; i++ {
		select {
		case err := <-done:
			if err == nil {
				t.Errorf("cancelled long poll returned no error")
			}
		case <-time.After(60 * time.Second):
			t.Fatal("a cancelled long poll did not return within 60 s")
		}
	}
}

package container

import (
	"context"
	"testing"

	"github.com/containerd/containerd/errdefs"
	"golang.org/x/sys/unix"
)

func TestManagerRejectsBadRequests(t *testing.T) {
	m := NewManager(DefaultConfig()) // no spawner: nothing can start
	ctx := context.Background()
	spec := []byte(`{"root":{"path":"/rootfs"},"process":{"args":["true"],"cwd":"/"}}`)

	for name, tc := range map[string]struct {
		err   error
		check func(error) bool
	}{
		"bad id":      {m.Create(ctx, CreateRequest{ID: "a/b", Spec: spec}), errdefs.IsInvalidArgument},
		"dot id":      {m.Create(ctx, CreateRequest{ID: "..", Spec: spec}), errdefs.IsInvalidArgument},
		"bad json":    {m.Create(ctx, CreateRequest{ID: "c1", Spec: []byte("{")}), errdefs.IsInvalidArgument},
		"no reaper":   {m.Create(ctx, CreateRequest{ID: "c1", Spec: spec}), errdefs.IsUnavailable},
		"start ghost": {m.Start(ctx, "ghost"), errdefs.IsNotFound},
		"bad exec id": {m.Exec(ctx, "ghost", "", []byte(`{}`), false, false), errdefs.IsInvalidArgument},
		"exec args":   {m.Exec(ctx, "ghost", "e1", []byte(`{"args":[]}`), false, false), errdefs.IsInvalidArgument},
		"exec ghost":  {m.Exec(ctx, "ghost", "e1", []byte(`{"args":["sh"]}`), false, false), errdefs.IsNotFound},
		"bad signal":  {m.Signal(ctx, "ghost", "", unix.Signal(65), false), errdefs.IsInvalidArgument},
		"remove":      {m.Remove(ctx, "ghost", 0), errdefs.IsNotFound},
		"resize":      {m.ResizeTerminal(ctx, "ghost", "", 1<<17, 1), errdefs.IsInvalidArgument},
	} {
		if !tc.check(tc.err) {
			t.Errorf("%s: %v", name, tc.err)
		}
	}
	if _, _, err := m.Wait(ctx, "ghost", ""); !errdefs.IsNotFound(err) {
		t.Errorf("wait: %v", err)
	}
	if _, _, err := m.ReadOutput(ctx, "ghost", "", false, 0); !errdefs.IsNotFound(err) {
		t.Errorf("read: %v", err)
	}
}

func TestContainerTransitions(t *testing.T) {
	c := &Container{id: "c1", state: statusCreated, init: &Process{exited: make(chan struct{})}}
	steps := []struct {
		to status
		ok bool
	}{
		{statusPaused, false}, {statusRunning, true}, {statusRunning, false},
		{statusPaused, true}, {statusPaused, false}, {statusRunning, true},
	}
	for i, s := range steps {
		err := c.transition(s.to)
		if (err == nil) != s.ok {
			t.Fatalf("step %d to %s: %v", i, s.to, err)
		}
		if err != nil && !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("step %d: %v, want FailedPrecondition", i, err)
		}
	}
	close(c.init.exited) // the init exits: stopped, whatever was recorded
	if c.status() != statusStopped || c.transition(statusPaused) == nil {
		t.Fatalf("after exit: %s", c.status())
	}
}

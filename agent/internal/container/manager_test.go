package container

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

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

// An exec's record (exit status, stdio buffers) is forgotten once the host
// removes it after collecting its exit, so that a long-lived container's
// records do not grow with every exec.
func TestRemoveProcessForgetsExecs(t *testing.T) {
	m := NewManager(DefaultConfig())
	ctx := context.Background()
	c := &Container{id: "c1", state: statusRunning, init: newProcess("c1", nil, false, false), execs: map[string]*Process{}}
	m.containers["c1"] = c
	exec := func(id string) *Process {
		p := newProcess(id, nil, false, false)
		p.stdout, p.stderr = newStream(streamLimit), endedStream()
		c.mu.Lock()
		c.execs[id] = p
		c.mu.Unlock()
		return p
	}

	const n = 300
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("e%d", i)
		p := exec(id)
		p.stdout.buf.WriteString("output the host read or not")
		if err := m.RemoveProcess(ctx, "c1", id); !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("remove of a running exec: %v, want FailedPrecondition", err)
		}
		p.exit(0, time.Now())
		if code, _, err := m.Wait(ctx, "c1", id); err != nil || code != 0 {
			t.Fatalf("wait %s: %d, %v", id, code, err)
		}
		if err := m.RemoveProcess(ctx, "c1", id); err != nil {
			t.Fatalf("remove %s: %v", id, err)
		}
		if got := m.execCount(); got != 0 {
			t.Fatalf("after %d execs the agent holds %d exec records, want 0", i+1, got)
		}
		if _, _, err := m.Wait(ctx, "c1", id); !errdefs.IsNotFound(err) {
			t.Fatalf("wait after remove: %v, want NotFound", err)
		}
		if err := m.RemoveProcess(ctx, "c1", id); !errdefs.IsNotFound(err) {
			t.Fatalf("second remove: %v, want NotFound", err)
		}
		// A reader still holding the stream sees its end, not a hang.
		if data, eof, err := p.stdout.read(ctx, 0); err != nil || !eof || len(data) != 0 {
			t.Fatalf("read of a removed exec's stream: %q %v %v, want EOF", data, eof, err)
		}
	}
	for _, id := range []string{"", "c1"} {
		if err := m.RemoveProcess(ctx, "c1", id); !errdefs.IsInvalidArgument(err) {
			t.Errorf("remove of the init (%q): %v, want InvalidArgument", id, err)
		}
	}
	if err := m.RemoveProcess(ctx, "ghost", "e1"); !errdefs.IsNotFound(err) {
		t.Errorf("remove in an unknown container: %v", err)
	}
}

// TestValidID checks the written-out ID check against the regexp it
// replaced (`^[\w+\-.]{1,128}$`, and neither "." nor "..").
func TestValidID(t *testing.T) {
	old := regexp.MustCompile(`^[\w+\-.]{1,128}$`)
	ids := []string{"", ".", "..", "...", "a", "c1", "A-b_c+d.e", "a/b", "a b", "é", "a\x00", "a\n",
		strings.Repeat("x", 128), strings.Repeat("x", 129), "../etc", "-", "+", "_", "0123456789abcdef"}
	for c := 0; c < 256; c++ {
		ids = append(ids, "id"+string(rune(c)), string([]byte{byte(c)}))
	}
	for _, id := range ids {
		want := old.MatchString(id) && id != "." && id != ".."
		if got := validID(id); got != want {
			t.Errorf("validID(%q) = %v, want %v", id, got, want)
		}
	}
}

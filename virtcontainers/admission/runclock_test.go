package admission

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"
)

func TestParseRunDelay(t *testing.T) {
	for _, c := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"137426 3428363 2\n", 3428363, true},
		{"1 0 0", 0, true},
		{"", 0, false},
		{"1", 0, false},
		{"1 x 2", 0, false},
		{"1 -5 2", 0, false},
		{"1 99999999999999999999999 2", 0, false},
	} {
		got, ok := parseRunDelay(c.in)
		if got != c.want || ok != c.ok {
			t.Errorf("parseRunDelay(%q) = %v, %v; want %v, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}

// TestRunClockCharges: with nothing watched, all time is charged; with
// processes watched, charged and starved time add up to the wall time.
func TestRunClockCharges(t *testing.T) {
	c := NewRunClock()
	time.Sleep(10 * time.Millisecond)
	charged, wall, starved := c.Elapsed()
	if starved != 0 || charged != wall {
		t.Errorf("nothing watched: charged %v, wall %v, starved %v; want all charged", charged, wall, starved)
	}
	c.Watch(os.Getpid())
	c.Watch(1 << 30) // no such process: ignored
	time.Sleep(10 * time.Millisecond)
	charged, wall, starved = c.Elapsed()
	if starved < 0 || starved > wall || charged+starved != wall {
		t.Errorf("charged %v + starved %v != wall %v", charged, starved, wall)
	}
}

// TestWithRunTimeout: the context ends with a RunTimeoutError as its cause
// once the run time is used up, or at the wall-time bound.
func TestWithRunTimeout(t *testing.T) {
	for _, c := range []struct{ timeout, maxWall time.Duration }{
		{time.Millisecond, time.Hour},
		{time.Hour, time.Millisecond},
	} {
		ctx, cancel := WithRunTimeout(context.Background(), NewRunClock(), c.timeout, c.maxWall)
		<-ctx.Done()
		var rt *RunTimeoutError
		if !errors.As(context.Cause(ctx), &rt) {
			t.Errorf("timeout %v, max wall %v: cause %v, want a RunTimeoutError", c.timeout, c.maxWall, context.Cause(ctx))
		} else if rt.Error() == "" {
			t.Error("empty RunTimeoutError text")
		}
		cancel()
	}
	// A cancelled parent is not a run timeout.
	parent, cancelParent := context.WithCancel(context.Background())
	ctx, cancel := WithRunTimeout(parent, NewRunClock(), time.Hour, time.Hour)
	defer cancel()
	cancelParent()
	<-ctx.Done()
	var rt *RunTimeoutError
	if errors.As(context.Cause(ctx), &rt) {
		t.Error("a cancelled parent reads as a run timeout")
	}
}

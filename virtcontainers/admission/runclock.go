package admission

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// clockTick is how often a RunClock samples its processes' threads.
const clockTick = 250 * time.Millisecond

// RunClock measures a VM's start in the time it could run: wall time minus
// the time its busiest thread spent runnable but waiting for a host CPU
// (the run_delay of /proc/PID/task/TID/schedstat). On an idle host the two
// are equal. On a loaded host the VM is not blamed for the host's queue: a
// guest that waits for CPU is slow, not wedged. A guest that spins or
// sleeps without answering is charged in full and still fails on time.
type RunClock struct {
	start time.Time

	mu      sync.Mutex
	pids    []int
	last    map[string]time.Duration // "pid/tid" → run_delay at the last sample
	sampled time.Time
	starved time.Duration
}

// NewRunClock starts a clock now; Watch adds the processes it watches.
func NewRunClock() *RunClock {
	now := time.Now()
	return &RunClock{start: now, sampled: now, last: map[string]time.Duration{}}
}

// Watch adds a process whose waiting for a CPU is not charged (the VMM, and
// the shim that relays the agent's answer). Before any is watched, all
// time is charged.
func (c *RunClock) Watch(pid int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sample(time.Now())
	c.pids = append(c.pids, pid)
	for k, v := range runDelays(pid) {
		c.last[k] = v
	}
}

// Elapsed returns the time charged so far, the wall time, and how much of
// the wall time the watched processes waited for a CPU.
func (c *RunClock) Elapsed() (charged, wall, starved time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	c.sample(now)
	wall = now.Sub(c.start)
	return wall - c.starved, wall, c.starved
}

// sample charges the interval since the last sample: the largest run_delay
// growth of any watched thread (a thread born in the interval counts from
// zero), never more than the interval itself.
func (c *RunClock) sample(now time.Time) {
	interval := now.Sub(c.sampled)
	c.sampled = now
	var worst time.Duration
	next := map[string]time.Duration{}
	for _, pid := range c.pids {
		for k, v := range runDelays(pid) {
			next[k] = v
			if d := v - c.last[k]; d > worst {
				worst = d
			}
		}
	}
	c.last = next
	c.starved += min(worst, interval)
}

// runDelays reads the run_delay of every thread of pid; an exited process
// has none.
func runDelays(pid int) map[string]time.Duration {
	out := map[string]time.Duration{}
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tids, err := os.ReadDir(dir)
	if err != nil {
		return out
	}
	for _, t := range tids {
		b, err := os.ReadFile(filepath.Join(dir, t.Name(), "schedstat"))
		if err != nil {
			continue
		}
		if d, ok := parseRunDelay(string(b)); ok {
			out[strconv.Itoa(pid)+"/"+t.Name()] = d
		}
	}
	return out
}

// parseRunDelay reads the second field of a schedstat line ("on-CPU ns,
// run_delay ns, timeslices").
func parseRunDelay(s string) (time.Duration, bool) {
	f := strings.Fields(s)
	if len(f) < 2 {
		return 0, false
	}
	ns, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil || ns < 0 {
		return 0, false
	}
	return time.Duration(ns), true
}

// RunTimeoutError ends a start that used up its run time, or its wall-time
// bound on a host so loaded that the VM barely ran.
type RunTimeoutError struct {
	Timeout, MaxWall       time.Duration
	Charged, Wall, Starved time.Duration
}

func (e *RunTimeoutError) Error() string {
	r := func(d time.Duration) time.Duration { return d.Round(100 * time.Millisecond) }
	if e.Wall >= e.MaxWall && e.Charged < e.Timeout {
		return fmt.Sprintf("the host gave it too little CPU: %s of wall time, %s of it waiting for a CPU (the wall-time bound is %s)",
			r(e.Wall), r(e.Starved), e.MaxWall)
	}
	return fmt.Sprintf("%s of run time used up (%s of wall time, %s of it waiting for a host CPU)", r(e.Charged), r(e.Wall), r(e.Starved))
}

// WithRunTimeout returns a context that ends, with a *RunTimeoutError as
// its cause, when c has charged timeout or maxWall of wall time has passed;
// or when ctx ends.
func WithRunTimeout(ctx context.Context, c *RunClock, timeout, maxWall time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	go func() {
		t := time.NewTicker(clockTick)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			charged, wall, starved := c.Elapsed()
			if charged >= timeout || wall >= maxWall {
				cancel(&RunTimeoutError{Timeout: timeout, MaxWall: maxWall, Charged: charged, Wall: wall, Starved: starved})
				return
			}
		}
	}()
	return ctx, func() { cancel(context.Canceled) }
}

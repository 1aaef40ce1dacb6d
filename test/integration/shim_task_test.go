//go:build integration

package integration

import (
	"context"
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/kasa-runtime/kasa/test/ctrtest"
)

// ctr runs one ctr command and fails the test if ctr could not run.
func ctr(t *testing.T, ctx context.Context, c *ctrtest.Containerd, args ...string) ctrtest.Result {
	t.Helper()
	res, err := c.Run(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func mustCtr(t *testing.T, ctx context.Context, c *ctrtest.Containerd, args ...string) string {
	t.Helper()
	res := ctr(t, ctx, c, args...)
	if res.ExitCode != 0 {
		t.Fatalf("%s", res)
	}
	return res.Stdout
}

// taskStatus is the STATUS column of `ctr task ls` for id.
func taskStatus(t *testing.T, ctx context.Context, c *ctrtest.Containerd, id string) string {
	t.Helper()
	for _, line := range strings.Split(mustCtr(t, ctx, c, "task", "ls"), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == id {
			return f[2]
		}
	}
	return ""
}

func waitStatus(t *testing.T, ctx context.Context, c *ctrtest.Containerd, id, want string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		if got := taskStatus(t, ctx, c, id); got == want {
			return time.Since(start)
		} else if time.Since(start) > within {
			t.Fatalf("task %s is %q after %v, want %s", id, got, within, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startDetached runs `sleep` style commands in the background in their own VM.
func startDetached(t *testing.T, ctx context.Context, c *ctrtest.Containerd, id string, flags []string, args ...string) {
	t.Helper()
	res, err := c.RunContainer(ctx, ctrtest.Container{ID: id, Runtime: ctrtest.RuntimeKasa, Detach: true, Flags: flags, Args: args})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("start %s: %v %s", id, err, res)
	}
	waitStatus(t, ctx, c, id, "RUNNING", 30*time.Second)
}

// removeTask kills, deletes and removes a detached container.
func removeTask(t *testing.T, ctx context.Context, c *ctrtest.Containerd, id string) {
	t.Helper()
	ctr(t, ctx, c, "task", "kill", "-s", "SIGKILL", id)
	deleteTask(t, ctx, c, id)
}

// deleteTask deletes a container and its task, then checks nothing of it is left.
func deleteTask(t *testing.T, ctx context.Context, c *ctrtest.Containerd, id string) {
	t.Helper()
	ctr(t, ctx, c, "task", "delete", "-f", id)
	ctr(t, ctx, c, "container", "delete", id)
	ctrtest.AssertNoLeftovers(t, c, id)
}

func TestShimTaskOperations(t *testing.T) {
	c, ctx := startKasaHarness(t, 10*time.Minute)
	const id = "kasa-long"
	startDetached(t, ctx, c, id, nil, "sh", "-c", "trap 'exit 42' TERM; while true; do sleep 1; done")
	defer removeTask(t, ctx, c, id)

	t.Run("exec", func(t *testing.T) {
		res := ctr(t, ctx, c, "task", "exec", "--exec-id", "e1", id, "sh", "-c", "echo from exec; exit 5")
		if res.ExitCode != 5 || res.Stdout != "from exec\n" {
			t.Fatalf("exec: %s", res)
		}
	})
	t.Run("pids", func(t *testing.T) {
		if out := mustCtr(t, ctx, c, "task", "ps", id); len(strings.Split(strings.TrimSpace(out), "\n")) < 2 {
			t.Fatalf("ps shows no process: %q", out)
		}
	})
	t.Run("pause and resume", func(t *testing.T) {
		mustCtr(t, ctx, c, "task", "pause", id)
		waitStatus(t, ctx, c, id, "PAUSED", 5*time.Second)
		mustCtr(t, ctx, c, "task", "resume", id)
		waitStatus(t, ctx, c, id, "RUNNING", 5*time.Second)
	})
	t.Run("stats", func(t *testing.T) {
		out := mustCtr(t, ctx, c, "task", "metrics", "--format", "json", id)
		var m struct {
			CPU struct {
				UsageUsec uint64 `json:"usage_usec"`
			} `json:"cpu"`
			Memory struct{ Usage uint64 }   `json:"memory"`
			Pids   struct{ Current uint64 } `json:"pids"`
		}
		if err := json.Unmarshal([]byte(out), &m); err != nil {
			t.Fatalf("metrics %q: %v", out, err)
		}
		if m.CPU.UsageUsec == 0 || m.Memory.Usage == 0 || m.Pids.Current == 0 {
			t.Fatalf("metrics have zeros: %+v from %s", m, out)
		}
	})
	t.Run("update memory limit", func(t *testing.T) {
		// ctr 1.6 has no `task update`: use containerd's API.
		limit := int64(96 << 20)
		if err := dialContainerd(t, c).updateResources(ctx, id, &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}); err != nil {
			t.Fatal(err)
		}
		// The guest cgroup's limit, as the shim's Stats reports it.
		out := mustCtr(t, ctx, c, "task", "metrics", "--format", "json", id)
		if !strings.Contains(out, `"usage_limit": `+strconv.Itoa(96<<20)) && !strings.Contains(out, `"usage_limit":`+strconv.Itoa(96<<20)) {
			t.Fatalf("metrics after the update do not show the 96 MiB limit: %s", out)
		}
	})
	t.Run("SIGTERM", func(t *testing.T) {
		mustCtr(t, ctx, c, "task", "kill", "-s", "SIGTERM", id)
		waitStatus(t, ctx, c, id, "STOPPED", 10*time.Second)
	})
}

// A VM that dies (QEMU killed) turns into an exit of its task within 2 s.
func TestShimVMDeathIsTaskExit(t *testing.T) {
	c, ctx := startKasaHarness(t, 5*time.Minute)
	const id = "kasa-vmdeath"
	startDetached(t, ctx, c, id, nil, "sleep", "1000")
	defer removeTask(t, ctx, c, id)
	pids := qemuProcesses(id)
	if len(pids) != 1 {
		t.Fatalf("qemu processes for %s: %v", id, pids)
	}
	pid, _ := strconv.Atoi(pids[0])
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	d := waitStatus(t, ctx, c, id, "STOPPED", 2*time.Second)
	t.Logf("task reported stopped %v after QEMU was killed", d)
	if b, _ := os.ReadFile(c.LogPath); !strings.Contains(string(b), "sandbox VM exited") {
		t.Errorf("containerd's log does not say why the task died")
	}
}

// A guest that stops answering (its QEMU stopped with SIGSTOP: kernel,
// agent, everything frozen) holds neither State, Kill nor Delete: the
// agent's deadline passes, SIGKILL then stops the VM, the task exits and
// nothing of it is left. The bounds are generous; without the deadlines
// these calls never returned.
func TestShimSilentGuest(t *testing.T) {
	c, ctx := startKasaHarness(t, 5*time.Minute)
	const id = "kasa-silent"
	startDetached(t, ctx, c, id, nil, "sleep", "1000")
	pids := qemuProcesses(id)
	if len(pids) != 1 {
		t.Fatalf("qemu processes for %s: %v", id, pids)
	}
	pid, _ := strconv.Atoi(pids[0])
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGCONT) }) // if it is still there
	const bound = 90 * time.Second
	timed := func(args ...string) ctrtest.Result {
		t.Helper()
		start := time.Now()
		res := ctr(t, ctx, c, args...)
		if d := time.Since(start); d > bound {
			t.Errorf("ctr %v took %v against a silent guest", args, d)
		} else {
			t.Logf("ctr %v: %v", args, d.Round(time.Millisecond))
		}
		return res
	}
	if got := taskStatus(t, ctx, c, id); got != "RUNNING" {
		t.Errorf("state against a silent guest: %q, want RUNNING", got)
	}
	if res := timed("task", "kill", "-s", "SIGKILL", id); res.ExitCode != 0 {
		t.Errorf("SIGKILL against a silent guest: %s", res)
	}
	waitStatus(t, ctx, c, id, "STOPPED", bound)
	timed("task", "delete", id)
	ctr(t, ctx, c, "container", "delete", id)
	ctrtest.AssertNoLeftovers(t, c, id)
}

// SIGKILL ends a task with 137.
func TestShimSIGKILL(t *testing.T) {
	c, ctx := startKasaHarness(t, 5*time.Minute)
	const id = "kasa-sigkill"
	startDetached(t, ctx, c, id, nil, "sleep", "1000")
	defer removeTask(t, ctx, c, id)
	mustCtr(t, ctx, c, "task", "kill", "-s", "SIGKILL", id)
	waitStatus(t, ctx, c, id, "STOPPED", 10*time.Second)
}

// A process killed by the guest's OOM killer under a memory limit becomes a
// TaskOOM event.
func TestShimOOMEvent(t *testing.T) {
	c, ctx := startKasaHarness(t, 5*time.Minute)
	sub, err := dialContainerd(t, c).subscribe(ctx, `topic=="/tasks/oom"`)
	if err != nil {
		t.Fatal(err)
	}
	events, errs := make(chan string, 1), make(chan error, 1)
	go func() {
		e, err := sub.Recv()
		if err != nil {
			errs <- err
			return
		}
		events <- string(e.GetEvent().GetValue())
	}()

	const id = "kasa-oom"
	res, err := c.RunContainer(ctx, ctrtest.Container{ID: id, Runtime: ctrtest.RuntimeKasa,
		Flags: []string{"--memory-limit", strconv.Itoa(32 << 20)},
		Args:  []string{"sh", "-c", "dd if=/dev/zero of=/dev/shm/fill bs=1M count=256; echo survived"}})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(res.Stdout, "survived") && !strings.Contains(res.Stderr+res.Stdout, "Killed") {
		t.Logf("dd output: %s", res)
	}
	select {
	case e := <-events:
		if !strings.Contains(e, id) {
			t.Fatalf("OOM event for another container: %v", e)
		}
	case err := <-errs:
		t.Fatalf("event subscription: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatalf("no TaskOOM event within 30 s; the run was %s", res)
	}
	ctrtest.AssertNoLeftovers(t, c, id)
}

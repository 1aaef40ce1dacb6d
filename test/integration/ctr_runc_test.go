//go:build integration

package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kasa-runtime/kasa/test/ctrtest"
)

// These tests prove the ctrtest harness with runc before the Kasa shim
// exists: a private containerd, the locally built busybox image, stdio and
// exit codes through `ctr run`, and teardown that leaves nothing. They need
// root, containerd, ctr, runc and busybox-static; no guest image.

func startRuncHarness(t *testing.T) *ctrtest.Containerd {
	t.Helper()
	ctrtest.Require(t, "runc", "containerd-shim-runc-v2")
	c := ctrtest.Start(t, ctrtest.Options{})
	t.Logf("containerd started in %v", c.StartupTime.Round(time.Millisecond))
	c.Busybox(t)
	return c
}

func TestCtrRunc(t *testing.T) {
	c := startRuncHarness(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	var ids []string
	run := func(t *testing.T, id string, stdin string, args ...string) ctrtest.Result {
		t.Helper()
		ids = append(ids, id)
		ct := ctrtest.Container{ID: id, Args: args}
		if stdin != "" {
			ct.Stdin = strings.NewReader(stdin)
		}
		res, err := c.RunContainer(ctx, ct)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s took %v", id, res.Duration.Round(time.Millisecond))
		return res
	}

	t.Run("hello", func(t *testing.T) {
		if res := run(t, "runc-hello", "", "echo", "hello"); res.ExitCode != 0 || res.Stdout != "hello\n" {
			t.Errorf("want hello and exit 0: %s", res)
		}
	})
	t.Run("exit code", func(t *testing.T) {
		if res := run(t, "runc-exit3", "", "sh", "-c", "echo out; echo err >&2; exit 3"); res.ExitCode != 3 || res.Stdout != "out\n" || !strings.Contains(res.Stderr, "err\n") {
			t.Errorf("want exit 3 with stdout and stderr apart: %s", res)
		}
	})
	t.Run("stdin", func(t *testing.T) {
		in := "line one\nline two\n" + strings.Repeat("x", 100000) + "\n"
		if res := run(t, "runc-stdin", in, "cat"); res.ExitCode != 0 || res.Stdout != in {
			t.Errorf("cat returned %d bytes of %d, exit %d, stderr %q", len(res.Stdout), len(in), res.ExitCode, res.Stderr)
		}
	})
	t.Run("image", func(t *testing.T) {
		// The image's /etc, the applets and the pgrep stand-in.
		script := `id -un; id -un nobody; id -gn nobody; test -d /tmp -a -d /proc/self -a -d /sys/fs -a -d /dev; echo dirs $?
sleep 30 & p=$!; [ "$(pgrep sleep)" = "$p" ] && echo pgrep ok
pkill sleep; wait $p; echo sleep killed $?
yes | head -n 2 | wc -l; dd if=/dev/zero bs=1k count=4 2>/dev/null | wc -c; env | grep -c ^PATH=`
		res := run(t, "runc-image", "", "sh", "-c", script)
		want := "root\nnobody\nnobody\ndirs 0\npgrep ok\nsleep killed 143\n2\n4096\n1\n"
		if res.ExitCode != 0 || res.Stdout != want {
			t.Errorf("got %s\nwant stdout %q", res, want)
		}
	})
	t.Run("missing command", func(t *testing.T) {
		res := run(t, "runc-nocmd", "", "/no/such/command")
		if res.ExitCode == 0 || !strings.Contains(res.Stderr, "no such file") {
			t.Errorf("want a failure naming the missing file: %s", res)
		}
	})
	t.Run("no leftovers", func(t *testing.T) {
		ctrtest.AssertNoLeftovers(t, c, ids...)
	})
}

// The leftover check sees a running container, and Stop cleans up a task
// a test left running: shim killed, cgroups and directories gone.
func TestCtrRuncStopCleansUp(t *testing.T) {
	c := startRuncHarness(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	const id = "runc-detached"
	res, err := c.RunContainer(ctx, ctrtest.Container{ID: id, Detach: true, Args: []string{"sleep", "600"}})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("detached run: %v %s", err, res)
	}
	left := ctrtest.FindLeftovers(ctx, c, id)
	found := strings.Join(left, "\n")
	for _, want := range []string{"shim process", "task " + id, "container " + id, "runc state", "cgroup "} {
		if !strings.Contains(found, want) {
			t.Errorf("leftovers of a running container lack %q:\n%s", want, found)
		}
	}

	stopping := time.Now()
	if err := c.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	t.Logf("stop with a running task took %v", time.Since(stopping).Round(time.Millisecond))
	if err := syscall.Kill(c.PID, 0); err == nil {
		t.Errorf("containerd pid %d still alive", c.PID)
	}
	if _, err := os.Stat(c.Dir); !os.IsNotExist(err) {
		t.Errorf("%s not removed: %v", c.Dir, err)
	}
	if dirs, _ := filepath.Glob("/sys/fs/cgroup/*/" + c.Namespace); len(dirs) > 0 {
		t.Errorf("cgroups left: %v", dirs)
	}
	ctrtest.AssertNoLeftovers(t, c, id)
}

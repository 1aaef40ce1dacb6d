//go:build integration

package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kasa-runtime/kasa/test/ctrtest"
)

// inPTY runs ctr under script(1), which gives it the terminal `ctr -t`
// insists on, and returns what the terminal showed.
func inPTY(t *testing.T, ctx context.Context, c *ctrtest.Containerd, args ...string) string {
	t.Helper()
	full := append([]string{"ctr", "--address", c.Address, "--namespace", c.Namespace}, args...)
	cmd := exec.CommandContext(ctx, "script", "-qefc", strings.Join(quoteAll(full), " "), "/dev/null")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", full, err, out)
	}
	return string(out)
}

func quoteAll(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return out
}

func TestShimTerminalAndLogURIs(t *testing.T) {
	if _, err := exec.LookPath("script"); err != nil {
		ctrtest.Missing(t, "script(1) from util-linux")
	}
	c, ctx := startKasaHarness(t, 5*time.Minute)
	conf := c.KasaConfig()

	t.Run("tty", func(t *testing.T) {
		const id = "kasa-tty"
		out := inPTY(t, ctx, c, "run", "--rm", "-t", "--runtime", ctrtest.RuntimeKasa, "--runtime-config-path", conf,
			c.Image, id, "ls", "-l", "/proc/self/fd/0")
		if !strings.Contains(out, "/dev/pts/") {
			t.Fatalf("no terminal in the container: %q", out)
		}
		ctrtest.AssertNoLeftovers(t, c, id)
	})
	t.Run("exec with tty", func(t *testing.T) {
		const id = "kasa-exectty"
		startDetached(t, ctx, c, id, nil, "sleep", "1000")
		defer removeTask(t, ctx, c, id)
		out := inPTY(t, ctx, c, "task", "exec", "-t", "--exec-id", "t1", id, "ls", "-l", "/proc/self/fd/0")
		if !strings.Contains(out, "/dev/pts/") {
			t.Fatalf("exec -t has no terminal: %q", out)
		}
	})
	t.Run("file log URI", func(t *testing.T) {
		const id = "kasa-filelog"
		logFile := filepath.Join(t.TempDir(), "out.log")
		res := ctr(t, ctx, c, "run", "--rm", "--runtime", ctrtest.RuntimeKasa, "--runtime-config-path", conf,
			"--log-uri", "file://"+logFile, c.Image, id, "sh", "-c", "echo to-stdout; echo to-stderr >&2")
		if res.ExitCode != 0 {
			t.Fatalf("%s", res)
		}
		b, _ := os.ReadFile(logFile)
		if !strings.Contains(string(b), "to-stdout") || !strings.Contains(string(b), "to-stderr") {
			t.Fatalf("log file holds %q", b)
		}
		ctrtest.AssertNoLeftovers(t, c, id)
	})
	t.Run("binary log URI", func(t *testing.T) {
		const id = "kasa-binlog"
		dir := t.TempDir()
		logger := filepath.Join(dir, "logger.sh")
		out := filepath.Join(dir, "captured")
		// containerd's protocol: output on fds 3 and 4, ready when fd 5 closes.
		script := "#!/bin/sh\nexec 5>&-\ncat <&3 >" + out + ".out &\ncat <&4 >" + out + ".err &\nwait\n"
		if err := os.WriteFile(logger, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		res := ctr(t, ctx, c, "run", "--rm", "--runtime", ctrtest.RuntimeKasa, "--runtime-config-path", conf,
			"--log-uri", "binary://"+logger, c.Image, id, "sh", "-c", "echo bin-out; echo bin-err >&2")
		if res.ExitCode != 0 {
			t.Fatalf("%s", res)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			o, _ := os.ReadFile(out + ".out")
			e, _ := os.ReadFile(out + ".err")
			if strings.Contains(string(o), "bin-out") && strings.Contains(string(e), "bin-err") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("logging binary got stdout %q stderr %q", o, e)
			}
			time.Sleep(50 * time.Millisecond)
		}
		ctrtest.AssertNoLeftovers(t, c, id)
	})
}

// A shim that dies leaves a VM, mounts and state; containerd then runs
// `containerd-shim-kasa-v2 delete`, which must clean all of it up.
func TestShimCrashIsCleanedUp(t *testing.T) {
	c, ctx := startKasaHarness(t, 5*time.Minute)
	const id = "kasa-shimcrash"
	startDetached(t, ctx, c, id, nil, "sleep", "1000")
	var shim int
	for _, p := range shimProcesses(id) {
		shim = p
	}
	if shim == 0 {
		t.Fatal("no shim process found")
	}
	if err := syscall.Kill(shim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// containerd notices the dead shim, runs `shim delete` and drops the task.
	deadline := time.Now().Add(15 * time.Second)
	for st := taskStatus(t, ctx, c, id); st != "" && st != "STOPPED"; st = taskStatus(t, ctx, c, id) {
		if time.Now().After(deadline) {
			t.Fatalf("task still %s 15 s after its shim was killed", st)
		}
		time.Sleep(100 * time.Millisecond)
	}
	deleteTask(t, ctx, c, id)
}

// A pod annotation that the configuration does not allow fails Create with
// an error naming it, before any VM is started.
func TestShimRefusesDisallowedAnnotation(t *testing.T) {
	c, ctx := startKasaHarness(t, 5*time.Minute)
	const id = "kasa-badann"
	res, err := c.RunContainer(ctx, ctrtest.Container{ID: id, Runtime: ctrtest.RuntimeKasa,
		Flags: []string{"--annotation", "io.katacontainers.config.hypervisor.default_memory=4096"}, Args: []string{"true"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode == 0 || !strings.Contains(res.Stderr, "io.katacontainers.config.hypervisor.default_memory") {
		t.Fatalf("want a failure naming the annotation: %s", res)
	}
	ctrtest.AssertNoLeftovers(t, c, id)
}

// shimProcesses lists pids of Kasa shims started for id.
func shimProcesses(id string) []int {
	var out []int
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range dirs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) > 0 && filepath.Base(args[0]) == ctrtest.ShimKasa && strings.Contains(string(b), "\x00-id\x00"+id+"\x00") {
			var pid int
			if _, err := fmt.Sscanf(filepath.Base(filepath.Dir(p)), "%d", &pid); err == nil {
				out = append(out, pid)
			}
		}
	}
	return out
}

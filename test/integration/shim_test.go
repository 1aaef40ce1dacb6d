//go:build integration

package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kasa-runtime/kasa/test/ctrtest"
)

// startKasaHarness is a private containerd whose PATH has this build's
// bin/ (the Kasa shim) and whose Kasa configuration points at the test's
// guest image, and a context that ends with the test or after timeout.
func startKasaHarness(t *testing.T, timeout time.Duration) (*ctrtest.Containerd, context.Context) {
	t.Helper()
	return startKasaHarnessWith(t, timeout, "")
}

// kasaConfigFile writes a Kasa configuration for the test's guest image
// with extraTOML appended ([agent.kata] is the open table) and returns its
// path.
func kasaConfigFile(t *testing.T, extraTOML string) string {
	t.Helper()
	dir := requireVM(t)
	conf := filepath.Join(t.TempDir(), "configuration.toml")
	body := fmt.Sprintf("[hypervisor.qemu]\nkernel = %q\ninitrd = %q\n\n[agent.kata]\ndial_timeout = 60\n%s",
		filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd.img"), extraTOML)
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return conf
}

// startKasaHarnessWith is startKasaHarness with extra TOML appended to the
// Kasa configuration.
func startKasaHarnessWith(t *testing.T, timeout time.Duration, extraTOML string) (*ctrtest.Containerd, context.Context) {
	t.Helper()
	repo, _ := filepath.Abs("../..")
	bin := filepath.Join(repo, "bin")
	if _, err := os.Stat(filepath.Join(bin, ctrtest.ShimKasa)); err != nil {
		t.Fatalf("needs %s/%s (make build): %v", bin, ctrtest.ShimKasa, err)
	}
	conf := kasaConfigFile(t, extraTOML)
	c := ctrtest.Start(t, ctrtest.Options{BinDirs: []string{bin}, KasaConfigPath: conf})
	c.Busybox(t)
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	t.Cleanup(cancel)
	return c, ctx
}

func TestShimCtrRun(t *testing.T) {
	c, ctx := startKasaHarness(t, 10*time.Minute)
	run := func(t *testing.T, id, stdin string, args ...string) ctrtest.Result {
		t.Helper()
		ct := ctrtest.Container{ID: id, Runtime: ctrtest.RuntimeKasa, Args: args}
		if stdin != "" {
			ct.Stdin = strings.NewReader(stdin)
		}
		res, err := c.RunContainer(ctx, ct)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %v", id, res.Duration.Round(time.Millisecond))
		ctrtest.AssertNoLeftovers(t, c, id)
		return res
	}

	t.Run("echo", func(t *testing.T) {
		res := run(t, "kasa-echo", "", "sh", "-c", "echo hello; uname -r")
		lines := strings.Split(strings.TrimSpace(res.Stdout), "\n")
		if res.ExitCode != 0 || len(lines) != 2 || lines[0] != "hello" {
			t.Fatalf("want hello and the guest kernel: %s", res)
		}
		if b, _ := os.ReadFile("/proc/sys/kernel/osrelease"); strings.TrimSpace(string(b)) == lines[1] {
			t.Fatalf("container saw the host kernel %q: not in a VM", lines[1])
		}
	})
	t.Run("exit code", func(t *testing.T) {
		res := run(t, "kasa-exit3", "", "sh", "-c", "echo out; echo err >&2; exit 3")
		if res.ExitCode != 3 || res.Stdout != "out\n" || !strings.Contains(res.Stderr, "err\n") {
			t.Fatalf("want exit 3 with stdout and stderr apart: %s", res)
		}
	})
	t.Run("stdin", func(t *testing.T) {
		in := "line one\nline two\n" + strings.Repeat("x", 100000) + "\n"
		res := run(t, "kasa-stdin", in, "cat")
		if res.ExitCode != 0 || res.Stdout != in {
			t.Fatalf("cat returned %d bytes of %d, exit %d, stderr %q", len(res.Stdout), len(in), res.ExitCode, res.Stderr)
		}
	})
	t.Run("pod sizing", func(t *testing.T) {
		// containerd's CRI sets these on a pod's sandbox: defaults + limits.
		ct := ctrtest.Container{ID: "kasa-sized", Runtime: ctrtest.RuntimeKasa,
			Flags: []string{"--annotation", "io.kubernetes.cri.sandbox-cpu-quota=100000", "--annotation", "io.kubernetes.cri.sandbox-cpu-period=100000",
				"--annotation", "io.kubernetes.cri.sandbox-memory=268435456"},
			Args: []string{"sh", "-c", "grep -c ^processor /proc/cpuinfo; grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2"}}
		res, err := c.RunContainer(ctx, ct)
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(res.Stdout)
		if res.ExitCode != 0 || len(f) != 2 || f[0] != "2" {
			t.Fatalf("want 2 vCPUs (1 default + 1 for the pod): %s", res)
		}
		if kb, _ := strconv.Atoi(f[1]); kb < 700<<10 {
			t.Fatalf("guest has %s kB, want about 768 MiB (512 default + 256 for the pod)", f[1])
		}
		ctrtest.AssertNoLeftovers(t, c, "kasa-sized")
	})
	t.Run("seccomp", func(t *testing.T) {
		// ctr's default profile: the container's processes run filtered (mode 2).
		ct := ctrtest.Container{ID: "kasa-seccomp", Runtime: ctrtest.RuntimeKasa, Flags: []string{"--seccomp"},
			Args: []string{"sh", "-c", "grep ^Seccomp: /proc/self/status"}}
		res, err := c.RunContainer(ctx, ct)
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode != 0 || strings.Fields(res.Stdout + " x x")[1] != "2" {
			t.Fatalf("want Seccomp: 2 (filter) inside the container: %s", res)
		}
		ctrtest.AssertNoLeftovers(t, c, "kasa-seccomp")
	})
	t.Run("disable_guest_seccomp", func(t *testing.T) {
		// The operator's explicit opt-out: the same profile is dropped.
		conf := kasaConfigFile(t, "\n[runtime]\ndisable_guest_seccomp = true\n")
		ct := ctrtest.Container{ID: "kasa-noseccomp", Runtime: ctrtest.RuntimeKasa, Flags: []string{"--seccomp"},
			RuntimeConfigPath: conf, Args: []string{"sh", "-c", "grep ^Seccomp: /proc/self/status"}}
		res, err := c.RunContainer(ctx, ct)
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode != 0 || strings.Fields(res.Stdout + " x x")[1] != "0" {
			t.Fatalf("want Seccomp: 0 inside the container with disable_guest_seccomp: %s", res)
		}
		ctrtest.AssertNoLeftovers(t, c, "kasa-noseccomp")
	})
	t.Run("kernel_modules", func(t *testing.T) {
		// The configured modules are loaded by the agent before any
		// container; one the guest does not have fails the start, naming
		// it, and leaves nothing behind.
		conf := kasaConfigFile(t, "kernel_modules = [\"kasa_no_such_module debug=1\"]\n")
		ct := ctrtest.Container{ID: "kasa-badmodule", Runtime: ctrtest.RuntimeKasa, RuntimeConfigPath: conf, Args: []string{"true"}}
		res, err := c.RunContainer(ctx, ct)
		if err == nil && res.ExitCode == 0 {
			t.Fatalf("started with a module the guest lacks: %s", res)
		}
		if msg := fmt.Sprint(err) + res.Stderr + res.Stdout; !strings.Contains(msg, "kernel module kasa_no_such_module") {
			t.Errorf("want an error naming the module, got %v / %s", err, res)
		}
		ctrtest.AssertNoLeftovers(t, c, "kasa-badmodule")
	})
	t.Run("missing binary", func(t *testing.T) {
		start := time.Now()
		res := run(t, "kasa-nocmd", "", "/no/such/command")
		if res.ExitCode == 0 || !strings.Contains(res.Stderr+res.Stdout, "/no/such/command") {
			t.Fatalf("want a failure naming the command: %s", res)
		}
		if d := time.Since(start); d > 2*time.Minute {
			t.Fatalf("took %v", d)
		}
	})
}

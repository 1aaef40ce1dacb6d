//go:build integration

package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/kasa-runtime/kasa/configuration"
	"github.com/kasa-runtime/kasa/virtcontainers/fsshare"
	"github.com/kasa-runtime/kasa/virtcontainers/hostcheck"
)

// kasa check's probes on this machine with the test's guest image: every
// requirement met (TCG may be a warning), and a missing kernel is a failure
// with a remedy.
func TestHostCheck(t *testing.T) {
	cfg := testConfig(t)
	results := hostcheck.Run(context.Background(), cfg)
	for _, r := range results {
		t.Logf("%-5s %-16s %s", r.Status, r.Name, r.Detail)
	}
	if hostcheck.Failed(results) {
		t.Fatal("host check failed on the test machine")
	}

	cfg.Hypervisor.Kernel = "/nonexistent/vmlinuz"
	results = hostcheck.Run(context.Background(), cfg)
	var kernel *hostcheck.Result
	for i := range results {
		if results[i].Name == "guest kernel" {
			kernel = &results[i]
		}
	}
	if kernel == nil || kernel.Status != hostcheck.Fail || kernel.Remedy == "" || !hostcheck.Failed(results) {
		t.Fatalf("missing kernel: %+v", kernel)
	}
}

// With the protections turned off, kasa check says so (warn), and with a
// kernel an unprivileged QEMU cannot read, it fails with the remedy.
func TestHostCheckConfinement(t *testing.T) {
	cfg := testConfig(t)
	status := func(name string) hostcheck.Result {
		for _, r := range hostcheck.Run(context.Background(), cfg) {
			if r.Name == name {
				return r
			}
		}
		t.Fatalf("no %q check", name)
		return hostcheck.Result{}
	}
	for _, name := range []string{"vmm identity", "vmm seccomp"} {
		if r := status(name); r.Status != hostcheck.Pass {
			t.Errorf("%s: %+v, want ok by default", name, r)
		}
	}
	// virtiofsd without root: ok, or a warning naming tmpfs where the
	// kernel cannot idmap it (before 6.3).
	release, _, tmpfs := fsshare.KernelIdmaps()
	if r := status("virtiofsd"); tmpfs && r.Status != hostcheck.Pass ||
		!tmpfs && (r.Status != hostcheck.Warn || !strings.Contains(r.Detail, "tmpfs")) || !strings.Contains(r.Detail, "without root") {
		t.Errorf("virtiofsd on Linux %s: %+v, want it without root (and a warning about tmpfs before 6.3)", release, r)
	}
	cfg.Hypervisor.VirtioFSUserns = configuration.VirtioFSUsernsOff
	if r := status("virtiofsd"); r.Status != hostcheck.Warn || !strings.Contains(r.Detail, "as root") {
		t.Errorf("virtiofsd with virtio_fs_userns = \"off\": %+v, want a warning that it runs as root", r)
	}
	cfg.Hypervisor.Rootless, cfg.Hypervisor.SeccompSandbox, cfg.Hypervisor.SharedFS = false, "", "virtio-9p"
	for _, name := range []string{"vmm identity", "vmm seccomp"} {
		if r := status(name); r.Status != hostcheck.Warn {
			t.Errorf("%s with the protection off: %+v, want warn", name, r)
		}
	}
	private := filepath.Join(t.TempDir(), "vmlinuz")
	b, _ := os.ReadFile(cfg.Hypervisor.Kernel)
	os.WriteFile(private, b, 0o600)
	cfg = testConfig(t)
	cfg.Hypervisor.Kernel = private
	if r := status("vmm identity"); r.Status != hostcheck.Fail || r.Remedy == "" {
		t.Errorf("a kernel only root can read: %+v, want a failure with a remedy", r)
	}
}

// kasa runtimeclass boots an idle sandbox, measures it and prints a
// RuntimeClass whose fixed overhead covers what was measured; it leaves
// nothing behind.
func TestKasaRuntimeClass(t *testing.T) {
	cfg := testConfig(t)
	repo, _ := filepath.Abs("../..")
	kasa := filepath.Join(repo, "bin", "kasa")
	if _, err := os.Stat(kasa); err != nil {
		t.Fatalf("%s: %v (make build)", kasa, err)
	}
	conf := filepath.Join(t.TempDir(), "configuration.toml")
	os.WriteFile(conf, []byte("[hypervisor.qemu]\nkernel = \""+cfg.Hypervisor.Kernel+"\"\ninitrd = \""+cfg.Hypervisor.Initrd+"\"\n"), 0o644)
	out, err := exec.Command(kasa, "--config", conf, "runtimeclass").Output()
	if err != nil {
		t.Fatalf("kasa runtimeclass: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	m := regexp.MustCompile(`(?m)^handler: kata\n(?:.*\n)*?overhead:\n  podFixed:\n    memory: "(\d+)Mi"\n    cpu: "(\d+)m"`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no RuntimeClass with overhead.podFixed in:\n%s", out)
	}
	mem, _ := strconv.Atoi(string(m[1]))
	measured := regexp.MustCompile(`QEMU (\d+) MiB`).FindSubmatch(out)
	if measured == nil {
		t.Fatal("the measured QEMU PSS is not printed")
	}
	qemu, _ := strconv.Atoi(string(measured[1]))
	if qemu < 16 || mem < qemu {
		t.Errorf("overhead %d Mi for a QEMU of %d MiB", mem, qemu)
	}
	if left, _ := filepath.Glob("/run/kasa/*/runtimeclass-*"); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

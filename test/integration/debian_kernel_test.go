//go:build integration

package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kasa-runtime/kasa/virtcontainers"
)

// The second kernel source: Debian's linux-image-amd64 with its modules in
// the initramfs, loaded by the agent in dependency order before it listens.
func TestDebianKernelGuestImage(t *testing.T) {
	cfg := testConfig(t)
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	agent := filepath.Join(repo, "bin", "kasa-agent")
	if _, err := os.Stat(agent); err != nil {
		t.Fatalf("needs %s (make build): %v", agent, err)
	}
	out := t.TempDir()
	cmd := exec.Command(filepath.Join(repo, "guest-image", "build.sh"), agent, out)
	cmd.Env = append(os.Environ(), "KERNEL_SOURCE=debian")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build.sh with KERNEL_SOURCE=debian: %v\n%s", err, b)
	}
	manifest, err := os.ReadFile(filepath.Join(out, "manifest.json"))
	if err != nil || !strings.Contains(string(manifest), `"kernel_source": "debian"`) {
		t.Fatalf("manifest: %v\n%s", err, manifest)
	}

	cfg.Hypervisor.Kernel = filepath.Join(out, "vmlinuz")
	cfg.Hypervisor.Initrd = filepath.Join(out, "initrd.img")
	id := newID(t)
	ctx := context.Background()
	vm, err := virtcontainers.StartVM(ctx, id, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer assertNothingLeft(t, id)
	defer vm.Stop(ctx)
	d, err := vm.Agent.GuestDetails(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(d.GetKernelRelease(), "-amd64") {
		t.Errorf("guest kernel %q is not Debian's", d.GetKernelRelease())
	}
	// virtio-serial, 9p and overlay are modules in Debian's kernel: present
	// only because the agent loaded them.
	for _, f := range []string{"virtio-serial", "9p", "overlay"} {
		if !contains(d.GetFeatures(), f) {
			t.Errorf("features %v lack %q", d.GetFeatures(), f)
		}
	}
	if err := vm.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}

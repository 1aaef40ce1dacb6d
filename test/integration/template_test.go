//go:build integration

package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kasa-runtime/kasa/configuration"
	"github.com/kasa-runtime/kasa/guest-image/cpio"
	"github.com/kasa-runtime/kasa/virtcontainers"
)

// templateConfig is testConfig with VM templates kept in a directory of the
// test's own.
func templateConfig(t *testing.T) *configuration.Config {
	cfg := testConfig(t)
	cfg.Factory.EnableTemplate = true
	cfg.Factory.TemplatePath = filepath.Join(t.TempDir(), "template")
	return cfg
}

// VM templates end to end, with real QEMU and the real agent, confined as
// every sandbox is: a burst of sandboxes that all need the missing template
// share the one that is made; each clone reseeds its RNG, so two clones
// read different random bytes; a clone whose QEMU is killed leaves the
// template intact; a truncated template is made again; the template of an
// older guest image is not used with a newer one; kasa template list shows
// them and kasa template remove deletes their files.
func TestVMTemplate(t *testing.T) {
	cfg := templateConfig(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	_, key, err := virtcontainers.TemplateSpec(cfg)
	if err != nil {
		t.Fatal(err)
	}
	store := virtcontainers.TemplateStore(cfg)

	// A burst of two sandboxes, no template yet.
	vms := make([]*virtcontainers.VM, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i := range vms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			vms[i], errs[i] = virtcontainers.StartVM(ctx, newID(t), cfg)
			t.Logf("sandbox %d: agent answered after %v", i, time.Since(start).Round(time.Millisecond))
		}()
	}
	wg.Wait()
	for i, vm := range vms {
		if errs[i] != nil {
			t.Fatalf("sandbox %d: %v", i, errs[i])
		}
		// Cleanups, not defers: the probes' own cleanups need the VMs.
		t.Cleanup(func() { assertNothingLeft(t, vm.ID) })
		t.Cleanup(func() { vm.Stop(ctx) })
		t.Cleanup(func() { logConsoleOnFailure(t, vm.ConsolePath()) })
		if vm.Config.Snapshot == nil {
			t.Fatalf("sandbox %d did not start from the template", i)
		}
		assertConfined(t, vm.PID(), cfg.Hypervisor.Rootless)
	}
	made, err := store.Open(key)
	if err != nil {
		t.Fatalf("template after the burst: %v", err)
	}
	if entries, _ := filepath.Glob(filepath.Join(cfg.Factory.TemplatePath, "*", "manifest.json")); len(entries) != 1 {
		t.Errorf("templates after the burst: %v, want one", entries)
	}

	// Each clone's RNG is its own.
	var random [2]string
	for i, vm := range vms {
		makeGuestRootfs(ctx, t, vm.Agent)
		random[i] = probe(ctx, t, vm.Agent, "head -c 32 /dev/urandom | od -An -tx1")
	}
	if len(random[0]) < 64 || random[0] == random[1] {
		t.Errorf("two clones read the same random bytes: %q, %q", random[0], random[1])
	}

	// kill -9 of a clone's QEMU: the VM is gone, the template is intact.
	victim, err := virtcontainers.StartVM(ctx, newID(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(victim.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-victim.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("killed clone's QEMU not reaped")
	}
	if err := victim.Stop(ctx); err != nil {
		t.Errorf("stopping the killed clone: %v", err)
	}
	assertNothingLeft(t, victim.ID)
	if _, err := store.Open(key); err != nil {
		t.Errorf("template after a clone was killed: %v", err)
	}

	// A truncated template is made again, and the sandbox starts.
	if err := os.Truncate(filepath.Join(store.Dir(key), "state"), 1000); err != nil {
		t.Fatal(err)
	}
	startAndStop(ctx, t, cfg)
	remade, err := store.Open(key)
	if err != nil {
		t.Fatalf("template after truncation: %v", err)
	}
	if !remade.Created.After(made.Created) {
		t.Errorf("truncated template was not made again (created %v, before %v)", remade.Created, made.Created)
	}

	// A newer guest image (here: the same initrd with one more file
	// appended, as a rebuilt agent would change it) has another key: the
	// template of the older one is not used, a new one is made and boots.
	other := cfg.Clone()
	other.Hypervisor.Initrd = newerInitrd(t, cfg.Hypervisor.Initrd)
	_, otherKey, err := virtcontainers.TemplateSpec(other)
	if err != nil {
		t.Fatal(err)
	}
	if otherKey == key {
		t.Fatal("a newer initrd has the older one's template key")
	}
	startAndStop(ctx, t, other)
	if _, err := store.Open(otherKey); err != nil {
		t.Errorf("template of the newer image: %v", err)
	}
	if m, err := store.Open(key); err != nil || !m.Created.Equal(remade.Created) {
		t.Errorf("the older image's template changed: %v", err)
	}

	// The operator's view: kasa template list, then remove.
	repo, _ := filepath.Abs("../..")
	conf := filepath.Join(t.TempDir(), "configuration.toml")
	os.WriteFile(conf, []byte(fmt.Sprintf("[hypervisor.qemu]\nkernel = %q\ninitrd = %q\n[factory]\nenable_template = true\ntemplate_path = %q\n",
		cfg.Hypervisor.Kernel, cfg.Hypervisor.Initrd, cfg.Factory.TemplatePath)), 0o644)
	kasa := func(args ...string) string {
		out, err := exec.Command(filepath.Join(repo, "bin", "kasa"), append([]string{"--config", conf, "template"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("kasa template %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if out := kasa("list"); !regexp.MustCompile(`(?m)^`+key+`\s+yes\s`).MatchString(out) || !strings.Contains(out, otherKey) {
		t.Errorf("kasa template list does not show both templates, %s in use:\n%s", key, out)
	}
	kasa("remove", key, otherKey)
	if left, _ := os.ReadDir(cfg.Factory.TemplatePath); len(left) != 0 {
		t.Errorf("left after kasa template remove: %v", left)
	}
}

func startAndStop(ctx context.Context, t *testing.T, cfg *configuration.Config) {
	t.Helper()
	vm, err := virtcontainers.StartVM(ctx, newID(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer assertNothingLeft(t, vm.ID)
	if vm.Config.Snapshot == nil {
		t.Error("sandbox did not start from a template")
	}
	if err := vm.Stop(ctx); err != nil {
		t.Error(err)
	}
}

// newerInitrd is a copy of initrd with a second archive appended (the
// kernel unpacks both): another image that boots the same.
func newerInitrd(t *testing.T, initrd string) string {
	t.Helper()
	b, err := os.ReadFile(initrd)
	if err != nil {
		t.Fatal(err)
	}
	var extra bytes.Buffer
	w := cpio.NewWriter(&extra)
	w.Add(cpio.Entry{Name: "kasa-newer-image", Mode: cpio.TypeReg | 0o644, Data: []byte("newer\n")})
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "initrd-newer.img")
	if err := os.WriteFile(path, append(b, extra.Bytes()...), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

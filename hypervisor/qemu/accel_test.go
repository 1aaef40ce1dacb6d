package qemu

import (
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kasa-runtime/kasa/hypervisor"
)

// requireQEMU returns qemu-system-x86_64's path, or skips; under CI=true a
// missing QEMU fails.
func requireQEMU(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("this test needs qemu-system-x86_64 (apt-get install qemu-system-x86): %v", err)
		}
		t.Skipf("skipping: this test needs qemu-system-x86_64 (apt-get install qemu-system-x86): %v", err)
	}
	return path
}

// requireRoot skips unless root; under CI=true it fails instead.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("this test needs root")
		}
		t.Skip("skipping: this test needs root")
	}
}

func TestProbeFirmwareLayout(t *testing.T) {
	img := probeFirmware()
	if len(img) != probeROMSize {
		t.Fatalf("image is %d bytes, QEMU wants a multiple of 64 KiB", len(img))
	}
	if len(probeCode) > probeGDTOff {
		t.Fatalf("code (%d bytes) overlaps the GDT at %#x", len(probeCode), probeGDTOff)
	}
	if img[probeResetOff] != 0xe9 {
		t.Fatalf("no jmp at the reset vector")
	}
	rel := binary.LittleEndian.Uint16(img[probeResetOff+1:])
	if target := uint16(probeResetOff + 3 + int(rel)); target != 0 {
		t.Errorf("reset vector jumps to %#x, want 0", target)
	}
	if base := binary.LittleEndian.Uint32(img[probeGDTROff+2:]); base != probeROMBase+probeGDTOff {
		t.Errorf("GDTR base %#x", base)
	}
	// The code's lgdt operand must point at the GDTR.
	if got := binary.LittleEndian.Uint16(img[0x0a:]); got != probeGDTROff {
		t.Errorf("lgdt reads %#x, GDTR is at %#x", got, probeGDTROff)
	}
}

// Running the probe under TCG proves the firmware walks real → protected →
// long mode and makes QEMU exit with the expected code.
func TestProbeFirmwareRunsUnderTCG(t *testing.T) {
	qemu := requireQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v := runProbe(ctx, qemu, hypervisor.AccelTCG, "max")
	if !v.ok {
		t.Fatalf("probe under TCG failed: %s", v.reason)
	}
	t.Log(v.reason)
}

func TestProbeReportsQEMUFailure(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v := runProbe(ctx, "/bin/false", hypervisor.AccelKVM, "host")
	if v.ok || !strings.Contains(v.reason, "exit status 1") {
		t.Errorf("verdict = %+v", v)
	}
}

func TestResolveAcceleratorForced(t *testing.T) {
	ctx := context.Background()
	got, reason, err := ResolveAccelerator(ctx, hypervisor.AccelTCG, "/nonexistent/qemu")
	if err != nil || got != hypervisor.AccelTCG || reason == "" {
		t.Errorf("tcg: got %q %q %v", got, reason, err)
	}
	if _, _, err := ResolveAccelerator(ctx, "hvf", "/nonexistent/qemu"); err == nil || !strings.Contains(err.Error(), "Accelerator") {
		t.Errorf("unknown accelerator: err = %v", err)
	}
}

func TestResolveAcceleratorWithoutKVMDevice(t *testing.T) {
	old := kvmDevice
	kvmDevice = filepath.Join(t.TempDir(), "kvm")
	t.Cleanup(func() { kvmDevice = old })
	ctx := context.Background()

	got, reason, err := ResolveAccelerator(ctx, hypervisor.AccelAuto, "/nonexistent/qemu")
	if err != nil || got != hypervisor.AccelTCG || !strings.Contains(reason, kvmDevice) {
		t.Errorf("auto: got %q, reason %q, err %v", got, reason, err)
	}
	if _, _, err := ResolveAccelerator(ctx, hypervisor.AccelKVM, "/nonexistent/qemu"); err == nil {
		t.Error("kvm without /dev/kvm succeeded")
	}
}

// Reports what "auto" finds on this host and how long the probe takes.
func TestQEMUIntegrationResolveAuto(t *testing.T) {
	requireRoot(t)
	qemu := requireQEMU(t)
	if _, err := os.Stat(kvmDevice); err != nil {
		t.Skipf("no %s: auto trivially means tcg", kvmDevice)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	got, reason, err := ResolveAccelerator(ctx, hypervisor.AccelAuto, qemu)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("auto → %s in %v: %s", got, time.Since(start).Round(time.Millisecond), reason)

	again, _, err := ResolveAccelerator(ctx, hypervisor.AccelAuto, qemu)
	if err != nil || again != got {
		t.Fatalf("second resolve: %q, %v", again, err)
	}
	// The verdict is kept (no timing asserted: a loaded host is slow).
	if e, ok := probes.Load(qemu); !ok || !e.(*probeEntry).done {
		t.Errorf("the verdict for %s is not cached in the process", qemu)
	}
}

// With QEMU's default CPU model, a broken KVM (this project's PVM hosts) runs
// the guest's real-mode start and then hangs; the probe must notice within
// its guest budget. On a working KVM the probe simply passes.
func TestQEMUIntegrationProbeKVMDefaultCPU(t *testing.T) {
	requireRoot(t)
	qemu := requireQEMU(t)
	if _, err := os.Stat(kvmDevice); err != nil {
		t.Skipf("no %s", kvmDevice)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	v := runProbe(ctx, qemu, hypervisor.AccelKVM, "qemu64")
	took := time.Since(start)
	t.Logf("ok=%v in %v: %s", v.ok, took.Round(time.Millisecond), v.reason)
	if limit := probeStartTimeout + probeGuestTimeout + 2*time.Second; took > limit {
		t.Errorf("probe took %v, more than %v", took, limit)
	}
}

// On a host whose /dev/kvm opens but hangs a guest (a fake device and a
// "QEMU" that shows the first stage and hangs), the probe runs once for the
// host: a second shim (a fresh process cache) reads the verdict from disk;
// a changed QEMU binary is probed again.
func TestProbeVerdictCachedForTheHost(t *testing.T) {
	dir := t.TempDir()
	oldDev, oldCache := kvmDevice, ProbeCacheDir
	kvmDevice, ProbeCacheDir = filepath.Join(dir, "kvm"), filepath.Join(dir, "cache")
	t.Cleanup(func() { kvmDevice, ProbeCacheDir = oldDev, oldCache })
	if err := os.WriteFile(kvmDevice, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	count := filepath.Join(dir, "count")
	qemu := filepath.Join(dir, "qemu-system-x86_64")
	script := "#!/bin/sh\necho run >> " + count + "\nprintf R\nexec sleep 30\n"
	if err := os.WriteFile(qemu, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	runs := func() int {
		b, _ := os.ReadFile(count)
		return strings.Count(string(b), "run")
	}
	newShim := func() { probes.Clear() }
	ctx := context.Background()

	for i := range 2 {
		newShim()
		got, reason, err := ResolveAccelerator(ctx, hypervisor.AccelAuto, qemu)
		if err != nil || got != hypervisor.AccelTCG || !strings.Contains(reason, "real mode") {
			t.Fatalf("shim %d: %q, %q, %v; want tcg after a guest hung in real mode", i, got, reason, err)
		}
		if i == 1 && !strings.Contains(reason, "cached") {
			t.Errorf("second shim's reason does not say it was cached: %q", reason)
		}
	}
	if n := runs(); n != 1 {
		t.Fatalf("probe ran %d times for two shims, want 1", n)
	}

	// A new QEMU binary (another mtime and size) is a new key.
	if err := os.WriteFile(qemu, []byte(script+"# upgraded\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	newShim()
	if _, _, err := ResolveAccelerator(ctx, hypervisor.AccelAuto, qemu); err != nil {
		t.Fatal(err)
	}
	if n := runs(); n != 2 {
		t.Fatalf("probe ran %d times after the binary changed, want 2", n)
	}
	// A corrupt cache file is ignored, not trusted.
	files, _ := filepath.Glob(filepath.Join(ProbeCacheDir, "*.json"))
	for _, f := range files {
		os.WriteFile(f, []byte("{garbage"), 0o600)
	}
	newShim()
	if _, _, err := ResolveAccelerator(ctx, hypervisor.AccelAuto, qemu); err != nil {
		t.Fatal(err)
	}
	if n := runs(); n != 3 {
		t.Fatalf("probe ran %d times after the cache was corrupted, want 3", n)
	}
}

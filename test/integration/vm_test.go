//go:build integration

package integration

import (
	"context"
	"crypto/rand"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/agent/client"
	"github.com/kasa-runtime/kasa/configuration"
	"github.com/kasa-runtime/kasa/virtcontainers"
)

// The core path: boot under QEMU, the agent answers Check and
// GetGuestDetails, DestroySandbox powers the guest off, nothing remains. On
// the default transport (auto: vhost-user-vsock on a host without
// /dev/vhost-vsock) and on virtio-serial, which must keep working when
// configured.
func TestVMBootsAndAgentAnswers(t *testing.T) {
	for _, tc := range []struct {
		transport configuration.AgentTransport
		scheme    string
		feature   string
	}{
		{configuration.TransportAuto, "hvsock://", api.FeatureVsock},
		{configuration.TransportVirtioSerial, "serial://", api.FeatureVirtioSerial},
	} {
		t.Run(string(tc.transport), func(t *testing.T) {
			cfg := testConfig(t)
			cfg.Agent.Transport = tc.transport
			if tc.transport == configuration.TransportVirtioSerial {
				cfg.Hypervisor.Rootless = false // QEMU creates its socket
			}
			testVMBootsAndAgentAnswers(t, cfg, tc.scheme, tc.feature)
		})
	}
}

func testVMBootsAndAgentAnswers(t *testing.T, cfg *configuration.Config, scheme, feature string) {
	cfg.Hypervisor.DefaultVCPUs = 2
	cfg.Hypervisor.DefaultMemory = 384
	id := newID(t)
	ctx := context.Background()

	start := time.Now()
	vm, err := virtcontainers.StartVM(ctx, id, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("agent answered %s after start on %s", time.Since(start).Round(time.Millisecond), vm.Agent.Address())
	defer assertNothingLeft(t, id)
	defer vm.Stop(ctx)
	if !strings.HasPrefix(vm.Agent.Address(), scheme) {
		t.Errorf("agent address %q, want %s...", vm.Agent.Address(), scheme)
	}
	assertConfined(t, vm.PID(), cfg.Hypervisor.Rootless)

	if err := vm.Agent.Check(ctx); err != nil {
		t.Fatalf("Check: %v", err)
	}
	d, err := vm.Agent.GuestDetails(ctx)
	if err != nil {
		t.Fatalf("GetGuestDetails: %v", err)
	}
	if d.GetKernelRelease() == "" || d.GetArch() != "x86_64" {
		t.Errorf("kernel %q arch %q", d.GetKernelRelease(), d.GetArch())
	}
	if d.GetOnlineCpus() != 2 {
		t.Errorf("online CPUs = %d, want 2", d.GetOnlineCpus())
	}
	if mib := d.GetMemTotalBytes() >> 20; mib < 300 || mib > 384 {
		t.Errorf("guest memory = %d MiB, want a little under 384", mib)
	}
	if d.GetApiVersion() != api.APIVersion {
		t.Errorf("agent API v%d, want v%d", d.GetApiVersion(), api.APIVersion)
	}
	for _, f := range []string{feature, api.Feature9P, api.FeatureOverlay, api.FeatureCgroup2, api.FeatureSeccomp} {
		if !contains(d.GetFeatures(), f) {
			t.Errorf("guest features %v lack %q", d.GetFeatures(), f)
		}
	}
	if !strings.Contains(d.GetKernelCmdline(), "console=ttyS0") {
		t.Errorf("kernel cmdline %q", d.GetKernelCmdline())
	}
	if feature == api.FeatureVsock {
		assertGuestPortsByDefault(t, ctx, vm.Agent.Address())
	}

	// DestroySandbox alone must power the guest off: QEMU exits by itself, cleanly.
	if err := vm.Agent.DestroySandbox(ctx); err != nil {
		t.Fatalf("DestroySandbox: %v", err)
	}
	select {
	case <-vm.Done():
		if err := vm.ExitError(); err != nil {
			t.Errorf("QEMU exit after power-off: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("guest did not power off within 15 s of DestroySandbox")
	}
	if err := vm.Stop(ctx); err != nil {
		t.Fatalf("Stop after power-off: %v", err)
	}
	assertNothingLeft(t, id)
	if err := vm.Stop(ctx); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}

// A restarted shim reconnects to the same agent: the old session, even one
// cut off in the middle of a frame, must not disturb the new one. This is
// virtio-serial's framing (agent/serialmux); vsock streams are separate
// connections by nature.
func TestAgentSurvivesHostReconnect(t *testing.T) {
	cfg := testConfig(t)
	cfg.Agent.Transport = configuration.TransportVirtioSerial
	cfg.Hypervisor.Rootless = false // QEMU creates its socket
	id := newID(t)
	ctx := context.Background()
	vm, err := virtcontainers.StartVM(ctx, id, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer assertNothingLeft(t, id)
	defer vm.Stop(ctx)
	addr := vm.Agent.Address()
	vm.Agent.Close()

	// A host that dies mid-frame: a frame header promising 16 KiB, 100 bytes of it.
	sock := strings.TrimPrefix(addr, "serial://")
	raw, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	torn := make([]byte, 100)
	rand.Read(torn)
	copy(torn, []byte{'K', 'S', 'M', '1', 3, 0, 0, 0, 1, 0, 0, 0x40, 0})
	raw.Write(torn)
	raw.Close()

	for i := 0; i < 3; i++ {
		dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		c, err := client.Dial(dctx, addr)
		if err != nil {
			cancel()
			t.Fatalf("reconnect %d: %v", i, err)
		}
		if err := c.Check(dctx); err != nil {
			t.Fatalf("Check after reconnect %d: %v", i, err)
		}
		if _, err := c.GuestDetails(dctx); err != nil {
			t.Fatalf("GetGuestDetails after reconnect %d: %v", i, err)
		}
		c.Close()
		cancel()
	}
	vm.Agent, err = client.Dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}

// A kernel that does not exist fails before anything is started.
func TestMissingKernelFailsCleanly(t *testing.T) {
	cfg := testConfig(t)
	cfg.Hypervisor.Kernel = "/nonexistent/vmlinuz"
	id := newID(t)
	_, err := virtcontainers.StartVM(context.Background(), id, cfg)
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/vmlinuz") || !strings.Contains(err.Error(), "hypervisor.qemu.kernel") {
		t.Fatalf("err = %v, want one naming the kernel path and its key", err)
	}
	assertNothingLeft(t, id)
}

// A guest that dies while booting (here: an initrd that is not a cpio
// archive, so the kernel panics) is reported at once with the console's
// last words, not after the dial timeout.
func TestVMDyingDuringBootFailsFast(t *testing.T) {
	cfg := testConfig(t)
	bad := filepath.Join(t.TempDir(), "garbage.img")
	junk := make([]byte, 64*1024)
	rand.Read(junk)
	if err := os.WriteFile(bad, junk, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.Hypervisor.Initrd = bad
	id := newID(t)
	start := time.Now()
	_, err := virtcontainers.StartVM(context.Background(), id, cfg)
	elapsed := time.Since(start)
	if err == nil {
		t.Fatal("boot with a garbage initrd succeeded")
	}
	if !strings.Contains(err.Error(), "VM exited before its agent answered") || !strings.Contains(err.Error(), "Kernel panic") {
		t.Fatalf("err = %v, want the VM's exit and the kernel panic from the console", err)
	}
	if elapsed >= cfg.Agent.DialTimeout {
		t.Fatalf("failure took %s, the whole dial timeout", elapsed)
	}
	t.Logf("failed after %s: %v", elapsed.Round(time.Millisecond), firstLine(err.Error()))
	assertNothingLeft(t, id)
}

// A guest that stays up but whose agent never answers hits the dial timeout,
// names it, and is torn down.
func TestSilentAgentTimesOut(t *testing.T) {
	cfg := testConfig(t)
	// No /init to run and panic=0: the kernel panics and then just sits there.
	cfg.Hypervisor.KernelParams = "rdinit=/nonexistent panic=0"
	cfg.Agent.DialTimeout = 8 * time.Second
	id := newID(t)
	start := time.Now()
	_, err := virtcontainers.StartVM(context.Background(), id, cfg)
	if err == nil {
		t.Fatal("boot without an agent succeeded")
	}
	if !strings.Contains(err.Error(), "agent.kata.dial_timeout") {
		t.Fatalf("err = %v, want the dial timeout named", err)
	}
	if elapsed := time.Since(start); elapsed < cfg.Agent.DialTimeout || elapsed > cfg.Agent.DialTimeout+20*time.Second {
		t.Fatalf("gave up after %s with a %s timeout", elapsed, cfg.Agent.DialTimeout)
	}
	assertNothingLeft(t, id)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

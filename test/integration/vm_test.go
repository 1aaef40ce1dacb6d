//go:build integration

package integration

import (
	"context"
	"crypto/rand"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/agent/client"
	"github.com/kasa-runtime/kasa/configuration"
	"github.com/kasa-runtime/kasa/hypervisor"
	"github.com/kasa-runtime/kasa/hypervisor/qemu"
	"github.com/kasa-runtime/kasa/virtcontainers"
	"github.com/kasa-runtime/kasa/virtcontainers/admission"
)

// The core path: boot under QEMU, the agent answers Check and
// GetGuestDetails, DestroySandbox powers the guest off, nothing remains. On
// the default transport (auto: vhost-user-vsock on a host without
// /dev/vhost-vsock) and on virtio-serial, which must keep working when
// configured.
func TestVMBootsAndAgentAnswers(t *testing.T) {
	for _, tc := range []struct {
		transport configuration.AgentTransport
		resolved  hypervisor.AgentTransport
		feature   string
	}{
		{configuration.TransportAuto, hypervisor.TransportVhostUserVsock, api.FeatureVsock},
		{configuration.TransportVirtioSerial, hypervisor.TransportVirtioSerial, api.FeatureVirtioSerial},
	} {
		t.Run(string(tc.transport), func(t *testing.T) {
			cfg := testConfig(t)
			cfg.Agent.Transport = tc.transport
			if tc.transport == configuration.TransportVirtioSerial {
				cfg.Hypervisor.Rootless = false // QEMU creates its socket
			}
			testVMBootsAndAgentAnswers(t, cfg, tc.resolved, tc.feature)
		})
	}
}

func testVMBootsAndAgentAnswers(t *testing.T, cfg *configuration.Config, transport hypervisor.AgentTransport, feature string) {
	cfg.Hypervisor.DefaultVCPUs = 2
	cfg.Hypervisor.DefaultMemory = 384
	id := newID(t)
	ctx := context.Background()

	start := time.Now()
	vm, err := virtcontainers.StartVM(ctx, id, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("agent answered %s after start over %s", time.Since(start).Round(time.Millisecond), vm.Config.AgentTransport)
	defer assertNothingLeft(t, id)
	defer vm.Stop(ctx)
	if vm.Config.AgentTransport != transport {
		t.Errorf("agent transport %s, want %s", vm.Config.AgentTransport, transport)
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
		assertGuestPortsByDefault(t, ctx, vm)
	} else if c, err := vm.DialGuest(ctx, api.GuestLogVsockPort); !errors.Is(err, hypervisor.ErrNotSupported) {
		if err == nil {
			c.Close()
		}
		t.Errorf("DialGuest of the guest log's port over %s: %v, want ErrNotSupported", vm.Config.AgentTransport, err)
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
	vm.Agent.Close()
	agent := func(ctx context.Context) (net.Conn, error) { return vm.DialGuest(ctx, api.AgentVsockPort) }

	// A host that dies mid-frame: a frame header promising 16 KiB, 100 bytes of it.
	raw, err := net.Dial("unix", qemu.PathsFor(vm.Config.StateDir).Agent)
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
		c, err := client.Connect(dctx, agent)
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
	vm.Agent, err = client.Connect(ctx, agent)
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
// names it, is torn down, and gives back its boot slot (here the node's
// only one, in a directory of the test's own).
func TestSilentAgentTimesOut(t *testing.T) {
	cfg := testConfig(t)
	// No /init to run and panic=0: the kernel panics and then just sits there.
	cfg.Hypervisor.KernelParams = "rdinit=/nonexistent panic=0"
	cfg.Agent.DialTimeout = 8 * time.Second
	cfg.Runtime.MaxConcurrentBoots = 1
	slotsDir := admission.Dir
	admission.Dir = t.TempDir()
	t.Cleanup(func() { admission.Dir = slotsDir })
	id := newID(t)
	start := time.Now()
	_, err := virtcontainers.StartVM(context.Background(), id, cfg)
	if err == nil {
		t.Fatal("boot without an agent succeeded")
	}
	if !strings.Contains(err.Error(), "agent.kata.dial_timeout") || !strings.Contains(err.Error(), "the VM started") {
		t.Fatalf("err = %v, want the dial timeout named, and that the VM had started", err)
	}
	// Not a timing assertion: run time never exceeds wall time, and a
	// starved VM is given at most 4 dial timeouts of wall time.
	if elapsed := time.Since(start); elapsed < cfg.Agent.DialTimeout || elapsed > 4*cfg.Agent.DialTimeout+20*time.Second {
		t.Fatalf("gave up after %s with a %s timeout", elapsed, cfg.Agent.DialTimeout)
	}
	t.Logf("gave up: %v", firstLine(err.Error()))
	assertNothingLeft(t, id)
	slots, err := admission.New(admission.Dir, 1)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	slot, err := slots.Acquire(ctx)
	if err != nil {
		t.Fatalf("the failed start kept its boot slot: %v", err)
	}
	slot.Release()
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

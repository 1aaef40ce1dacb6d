package qemu

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/hypervisor"
)

// vmConfig is a valid config whose files exist (the kernel is a dummy).
func vmConfig(t *testing.T, qemuPath, machine string) hypervisor.VMConfig {
	t.Helper()
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(kernel, []byte("not a kernel"), 0o600); err != nil {
		t.Fatal(err)
	}
	return hypervisor.VMConfig{
		ID:             "test-" + machine,
		StateDir:       filepath.Join(dir, "vm"),
		Path:           qemuPath,
		Kernel:         kernel,
		MachineType:    machine,
		VCPUs:          1,
		MemoryMiB:      64,
		Accelerator:    hypervisor.AccelTCG,
		AgentTransport: hypervisor.TransportVirtioSerial,
	}
}

// spinFirmware is a 64 KiB BIOS that halts forever at the reset vector
// (cli; hlt; jmp back to hlt): a VM that stays up and costs no CPU.
func spinFirmware(t *testing.T) string {
	t.Helper()
	img := bytes.Repeat([]byte{0xf4}, probeROMSize)
	copy(img[probeResetOff:], []byte{0xfa, 0xf4, 0xeb, 0xfd})
	path := filepath.Join(t.TempDir(), "spin.rom")
	if err := os.WriteFile(path, img, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// bootFirmwareInstead is the test hook that replaces the guest kernel with
// firmware: it drops -kernel/-initrd/-append/-bios from a built command line
// and boots firmware. Everything else (devices, chardevs, QMP) is exactly
// what BuildArgs made, so real QEMU validates it.
func bootFirmwareInstead(args []string, firmware string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "-kernel", "-initrd", "-append", "-bios":
			i++
		default:
			out = append(out, args[i])
		}
	}
	return append(out, "-bios", firmware)
}

// startFirmwareVM creates and starts a VM that runs firmware instead of a kernel.
func startFirmwareVM(t *testing.T, ctx context.Context, qemuPath, machine, firmware string) (*QEMU, hypervisor.VMConfig) {
	t.Helper()
	cfg := vmConfig(t, qemuPath, machine)
	q := New()
	if err := q.CreateVM(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	q.args = bootFirmwareInstead(q.args, firmware)
	if err := q.StartVM(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.StopVM(context.Background()) })
	return q, cfg
}

func processGone(pid int) bool {
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

func waitDone(t *testing.T, q *QEMU, within time.Duration) {
	t.Helper()
	select {
	case <-q.Done():
		return
	default:
	}
	select {
	case <-q.Done():
	case <-time.After(within):
		t.Fatalf("Done not closed within %v", within)
	}
}

func TestInvalidTransitions(t *testing.T) {
	ctx := context.Background()
	q := New()
	if err := q.StartVM(ctx); err == nil || !strings.Contains(err.Error(), "invalid state transition") {
		t.Errorf("StartVM before CreateVM: %v", err)
	}
	if err := q.SaveVM(ctx); err == nil {
		t.Error("SaveVM before start succeeded")
	}
	if q.PID() != 0 || q.ConsolePath() != "" || q.ExitError() != nil {
		t.Error("accessors of a new VM are not zero")
	}
	if c, err := q.DialGuest(ctx, AgentPort); err == nil {
		c.Close()
		t.Error("DialGuest before CreateVM succeeded")
	}
	if err := q.StopVM(ctx); err != nil {
		t.Errorf("StopVM of a never-started VM: %v", err)
	}
	waitDone(t, q, time.Second)
	if err := q.CreateVM(ctx, vmConfig(t, "/bin/true", MachinePC)); err == nil {
		t.Error("CreateVM after StopVM succeeded")
	}
}

func TestCreateVMChecksFiles(t *testing.T) {
	cfg := vmConfig(t, "/nonexistent/qemu", MachineQ35)
	cfg.Kernel = "/nonexistent/vmlinuz"
	cfg.Initrd = "/nonexistent/initrd"
	err := New().CreateVM(context.Background(), cfg)
	if err == nil {
		t.Fatal("CreateVM succeeded")
	}
	for _, want := range []string{"Path", "Kernel", "Initrd"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

func TestCreateVMSetsAddresses(t *testing.T) {
	cfg := vmConfig(t, "/bin/true", MachineQ35)
	q := New()
	if err := q.CreateVM(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if got, want := q.info.Load().channel, (guestChannel{serial: cfg.StateDir + "/agent.sock"}); got != want {
		t.Errorf("guest channel = %+v, want %+v", got, want)
	}
	// virtio-serial carries the agent's port only.
	if _, err := q.DialGuest(context.Background(), api.GuestLogVsockPort); !errors.Is(err, hypervisor.ErrNotSupported) {
		t.Errorf("DialGuest of the guest log's port over virtio-serial: %v, want ErrNotSupported", err)
	}
	if got, want := q.ConsolePath(), cfg.StateDir+"/console.log"; got != want {
		t.Errorf("ConsolePath = %q, want %q", got, want)
	}
	if q.Accelerator() != hypervisor.AccelTCG {
		t.Errorf("Accelerator = %q", q.Accelerator())
	}
	if _, err := os.Stat(cfg.StateDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("CreateVM touched the state directory: %v", err)
	}
}

// The kernel's vsock: CreateVM claims the guest CID itself, and a device it
// cannot use is ErrTransportUnavailable, naming it.
func TestCreateVMClaimsVhostVsock(t *testing.T) {
	old := VhostVsockDevice
	defer func() { VhostVsockDevice = old }()
	cfg := vmConfig(t, "/bin/true", MachineQ35)
	cfg.AgentTransport = hypervisor.TransportVsock

	VhostVsockDevice = filepath.Join(t.TempDir(), "vhost-vsock")
	q := New()
	err := q.CreateVM(context.Background(), cfg)
	if !errors.Is(err, hypervisor.ErrTransportUnavailable) || !strings.Contains(err.Error(), VhostVsockDevice) {
		t.Errorf("CreateVM without the device: %v, want ErrTransportUnavailable naming it", err)
	}
	// A file that is not the device fails the CID ioctl.
	if err := os.WriteFile(VhostVsockDevice, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	err = q.CreateVM(context.Background(), cfg)
	if !errors.Is(err, hypervisor.ErrTransportUnavailable) || !strings.Contains(err.Error(), "guest CID") {
		t.Errorf("CreateVM on a plain file: %v, want ErrTransportUnavailable about the guest CID", err)
	}
	if q.vhostVsock != nil {
		t.Error("a failed claim left the device open")
	}
}

// The agent's port is the same number on both sides of the contract.
func TestAgentPortIsTheAPIs(t *testing.T) {
	if AgentPort != api.AgentVsockPort {
		t.Errorf("AgentPort %d, agent/api.AgentVsockPort %d", AgentPort, api.AgentVsockPort)
	}
}

// A state directory that already exists may belong to a live VM: StartVM
// refuses it and, not having made it, leaves it alone.
func TestStartVMRefusesExistingStateDir(t *testing.T) {
	cfg := vmConfig(t, "/bin/true", MachinePC)
	if err := os.Mkdir(cfg.StateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	q := New()
	if err := q.CreateVM(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	err := q.StartVM(context.Background())
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("want ErrExist, got %v", err)
	}
	if _, err := os.Stat(cfg.StateDir); err != nil {
		t.Errorf("StartVM removed a state directory it did not create: %v", err)
	}
	waitDone(t, q, time.Second)
	if q.ExitError() == nil {
		t.Error("ExitError is nil after a failed start")
	}
}

func TestQEMUIntegrationStartFailureLeavesNothing(t *testing.T) {
	requireRoot(t)
	qemu := requireQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	cfg := vmConfig(t, qemu, MachinePC) // its kernel is not a kernel
	q := New()
	if err := q.CreateVM(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	err := q.StartVM(ctx)
	if err == nil {
		q.StopVM(ctx)
		t.Fatal("StartVM with a bogus kernel succeeded")
	}
	t.Logf("StartVM: %v", err)
	if !strings.Contains(err.Error(), "invalid kernel header") {
		t.Errorf("error lacks QEMU's own message: %v", err)
	}
	if _, serr := os.Stat(cfg.StateDir); !errors.Is(serr, fs.ErrNotExist) {
		t.Errorf("state directory left behind: %v", serr)
	}
	waitDone(t, q, time.Second)
	if q.PID() == 0 || !processGone(q.PID()) {
		t.Errorf("QEMU pid %d still exists", q.PID())
	}
	if q.ExitError() == nil {
		t.Error("ExitError is nil")
	}
	if err := q.StopVM(ctx); err != nil {
		t.Errorf("StopVM after a failed start: %v", err)
	}
}

func TestQEMUIntegrationLifecycle(t *testing.T) {
	requireRoot(t)
	qemu := requireQEMU(t)
	firmware := spinFirmware(t)
	for _, machine := range []string{MachinePC, MachineQ35, MachineMicroVM} {
		t.Run(machine, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			q, cfg := startFirmwareVM(t, ctx, qemu, machine, firmware)
			pid := q.PID()
			if pid == 0 || processGone(pid) {
				t.Fatalf("no QEMU process (pid %d)", pid)
			}
			for _, p := range []string{q.paths.Agent, q.ConsolePath()} {
				if _, err := os.Stat(p); err != nil {
					t.Errorf("missing %s", p)
				}
			}
			if b, err := os.ReadFile(q.paths.PIDFile); err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(pid) {
				t.Errorf("pid file: %q, %v; want %d", b, err, pid)
			}

			expectStatus(t, ctx, q, "running")
			if err := q.SaveVM(ctx); err == nil {
				t.Error("SaveVM of a VM that is not a template succeeded")
			}
			expectStatus(t, ctx, q, "running")

			start := time.Now()
			if err := q.StopVM(ctx); err != nil {
				t.Fatal(err)
			}
			t.Logf("StopVM took %v", time.Since(start).Round(time.Millisecond))
			waitDone(t, q, 0)
			if err := q.ExitError(); err != nil {
				t.Errorf("ExitError after a clean stop: %v", err)
			}
			if !processGone(pid) {
				t.Errorf("QEMU pid %d still exists", pid)
			}
			if _, err := os.Stat(cfg.StateDir); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("state directory left behind: %v", err)
			}
			if err := q.StopVM(ctx); err != nil {
				t.Errorf("second StopVM: %v", err)
			}
			if err := q.SaveVM(ctx); err == nil {
				t.Error("SaveVM after StopVM succeeded")
			}
		})
	}
}

func expectStatus(t *testing.T, ctx context.Context, q *QEMU, want string) {
	t.Helper()
	st, err := q.qmp.QueryStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Status != want {
		t.Errorf("query-status = %q, want %q", st.Status, want)
	}
}

func TestQEMUIntegrationKilledExternally(t *testing.T) {
	requireRoot(t)
	qemu := requireQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	q, cfg := startFirmwareVM(t, ctx, qemu, MachinePC, spinFirmware(t))

	if err := syscall.Kill(q.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitDone(t, q, 5*time.Second)
	if err := q.ExitError(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("ExitError = %v, want a kill", err)
	}
	if _, err := q.qmp.QueryStatus(ctx); !errors.Is(err, ErrQMPClosed) {
		t.Errorf("QMP of a dead VM: %v", err)
	}
	if err := q.StopVM(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cfg.StateDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("state directory left behind: %v", err)
	}
}

// A QEMU that cannot answer quit (here: SIGSTOPped) is killed when the
// context of StopVM ends.
func TestQEMUIntegrationStopKillsUnresponsive(t *testing.T) {
	requireRoot(t)
	qemu := requireQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	q, cfg := startFirmwareVM(t, ctx, qemu, MachinePC, spinFirmware(t))
	pid := q.PID()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopCtx, stopCancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer stopCancel()
	if err := q.StopVM(stopCtx); err != nil {
		t.Fatal(err)
	}
	if err := q.ExitError(); err == nil || !strings.Contains(err.Error(), "graceful quit timed out") {
		t.Errorf("ExitError = %v", err)
	}
	if !processGone(pid) {
		t.Errorf("QEMU pid %d still exists", pid)
	}
	if _, err := os.Stat(cfg.StateDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("state directory left behind: %v", err)
	}
}

package qemu

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/agent/client"
	"github.com/kasa-runtime/kasa/hypervisor"
	"github.com/kasa-runtime/kasa/internal/parentdeath"
)

// guestImage is make guest-image's output, a kernel and the agent's initrd:
// $KASA_TEST_GUEST_DIR, else the directory of $KASA_TEST_KERNEL (which
// `make test-integration` points at build/guest/vmlinuz). It skips, or
// fails under CI=true, without one.
func guestImage(t *testing.T) (kernel, initrd string) {
	t.Helper()
	dir := os.Getenv("KASA_TEST_GUEST_DIR")
	if k := os.Getenv("KASA_TEST_KERNEL"); dir == "" && k != "" {
		dir = filepath.Dir(k)
	}
	kernel, initrd = filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd.img")
	_, err1 := os.Stat(kernel)
	_, err2 := os.Stat(initrd)
	if dir == "" || err1 != nil || err2 != nil {
		msg := "this test needs KASA_TEST_GUEST_DIR pointing at `make guest-image` output"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip("skipping: " + msg)
	}
	return kernel, initrd
}

// startVsockVM boots the real guest with the agent on vhost-user-vsock and
// returns once the agent answers Check.
func startVsockVM(t *testing.T, ctx context.Context, machine string) (*QEMU, *client.Client, hypervisor.VMConfig) {
	t.Helper()
	requireRoot(t)
	qemu := requireQEMU(t)
	kernel, initrd := guestImage(t)
	var b [4]byte
	rand.Read(b[:])
	id := "vsock-" + hex.EncodeToString(b[:])
	cfg := hypervisor.VMConfig{
		ID: id, StateDir: filepath.Join(t.TempDir(), "vm"),
		Path: qemu, Kernel: kernel, Initrd: initrd, MachineType: machine,
		VCPUs: 1, MemoryMiB: 256, Accelerator: hypervisor.AccelTCG,
		AgentTransport: hypervisor.TransportVhostUserVsock,
	}
	q := New()
	if err := q.CreateVM(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := q.StartVM(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.StopVM(context.Background()) })
	start := time.Now()
	c := dialAgent(t, ctx, q)
	t.Logf("%s: agent answered over vhost-user-vsock %v after start", machine, time.Since(start).Round(time.Millisecond))
	return q, c, cfg
}

func dialAgent(t *testing.T, ctx context.Context, q *QEMU) *client.Client {
	t.Helper()
	dctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	c, err := client.Connect(dctx, agentDialer(q))
	if err == nil {
		err = c.Check(dctx)
	}
	if err != nil {
		t.Fatalf("agent: %v\nconsole: %s", err, tail(q.ConsolePath(), 1500))
	}
	return c
}

// agentDialer dials q's agent port: the sandbox layer's way to its agent.
func agentDialer(q *QEMU) client.DialFunc {
	return func(ctx context.Context) (net.Conn, error) { return q.DialGuest(ctx, api.AgentVsockPort) }
}

// memfdMappings counts the guest-memory mappings in this process.
func memfdMappings(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "/memfd:")
}

// fdTargets lists what the process's descriptors point at, for an error.
func fdTargets() string {
	ents, _ := os.ReadDir("/proc/self/fd")
	var out []string
	for _, e := range ents {
		l, _ := os.Readlink("/proc/self/fd/" + e.Name())
		if ino, ok := strings.CutPrefix(l, "socket:["); ok {
			ino = strings.TrimSuffix(ino, "]")
			for _, tab := range []string{"unix", "netlink", "tcp", "tcp6", "udp", "udp6"} {
				b, _ := os.ReadFile("/proc/self/net/" + tab)
				for _, line := range strings.Split(string(b), "\n") {
					if slices.Contains(strings.Fields(line), ino) {
						l += " (" + tab + ": " + strings.Join(strings.Fields(line), " ") + ")"
					}
				}
			}
		}
		out = append(out, e.Name()+"→"+l)
	}
	return strings.Join(out, " ")
}

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// The agent on AF_VSOCK 1024 through the in-process backend, on a PCI and
// an MMIO machine; a guest reset drops the host's connections and the
// rebooted guest's agent answers again through the same backend; a guest
// power-off ends QEMU cleanly; nothing of the backend remains.
func TestQEMUIntegrationVhostUserVsock(t *testing.T) {
	// What lives as long as the test process (the launcher thread every
	// QEMU is forked from) is started before the counts are taken.
	warm := exec.Command("true")
	if err := parentdeath.Start(warm); err != nil {
		t.Fatal(err)
	}
	warm.Wait()
	for _, machine := range []string{MachineQ35, MachineMicroVM} {
		t.Run(machine, func(t *testing.T) {
			goroutines, fds, maps := runtime.NumGoroutine(), openFDs(t), memfdMappings(t)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			q, c, cfg := startVsockVM(t, ctx, machine)

			d, err := c.GuestDetails(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(d.GetFeatures(), api.FeatureVsock) {
				t.Errorf("guest features %v lack vsock", d.GetFeatures())
			}
			if memfdMappings(t) == maps {
				t.Error("the backend did not map guest memory")
			}

			// Guest reset: let QEMU reset instead of exit (-no-reboot), then reset.
			if _, err := q.qmp.Execute(ctx, "set-action", map[string]any{"reboot": "reset"}); err != nil {
				t.Fatal(err)
			}
			if _, err := q.qmp.Execute(ctx, "system_reset", nil); err != nil {
				t.Fatal(err)
			}
			cctx, ccancel := context.WithTimeout(ctx, 15*time.Second)
			for c.Check(cctx) == nil {
				time.Sleep(50 * time.Millisecond)
			}
			if cctx.Err() != nil {
				t.Fatal("the agent connection survived a guest reset")
			}
			ccancel()
			c.Close()
			start := time.Now()
			c = dialAgent(t, ctx, q)
			t.Logf("agent answered again %v after the reset", time.Since(start).Round(time.Millisecond))

			// Guest power-off (by reboot, which ends QEMU again).
			if _, err := q.qmp.Execute(ctx, "set-action", map[string]any{"reboot": "shutdown"}); err != nil {
				t.Fatal(err)
			}
			if err := c.DestroySandbox(ctx); err != nil {
				t.Fatal(err)
			}
			waitDone(t, q, 30*time.Second)
			if err := q.ExitError(); err != nil {
				t.Errorf("exit after power-off: %v", err)
			}
			c.Close()
			if err := q.StopVM(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(cfg.StateDir); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("state directory left: %v", err)
			}
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				g, f, m := runtime.NumGoroutine(), openFDs(t), memfdMappings(t)
				if g <= goroutines && f <= fds && m == maps {
					break
				}
				if time.Now().After(deadline) {
					var stacks strings.Builder
					pprof.Lookup("goroutine").WriteTo(&stacks, 1)
					t.Fatalf("left behind: goroutines %d → %d, fds %d → %d, memfd mappings %d → %d; descriptors now: %s; goroutines now:\n%s", goroutines, g, fds, f, maps, m, fdTargets(), stacks.String())
				}
			}
		})
	}
}

// A backend that dies under a running VM kills QEMU: agent calls fail at
// once and the VM's exit names the backend.
func TestQEMUIntegrationVsockBackendDies(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	q, c, _ := startVsockVM(t, ctx, MachineQ35)
	defer c.Close()

	q.vsock.Close() // as if it had failed
	start := time.Now()
	cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
	defer ccancel()
	err := c.Check(cctx)
	if err == nil || cctx.Err() != nil {
		t.Fatalf("Check after the backend died: %v (after %v)", err, time.Since(start))
	}
	t.Logf("Check failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
	waitDone(t, q, 10*time.Second)
	if err := q.ExitError(); err == nil || !strings.Contains(err.Error(), "vsock backend") {
		t.Fatalf("ExitError = %v, want the vsock backend named", err)
	}
	t.Logf("VM exit: %v", q.ExitError())
	dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
	defer dcancel()
	if _, err := client.Connect(dctx, agentDialer(q)); err == nil {
		t.Fatal("dialling the agent of a dead VM succeeded")
	}
	if err := q.StopVM(ctx); err != nil {
		t.Fatal(err)
	}
}

// A QEMU that fails to start (here: a file that is not a kernel) takes the
// vsock backend down with it: no socket, goroutine or descriptor remains.
func TestQEMUIntegrationVhostUserVsockStartFailure(t *testing.T) {
	requireRoot(t)
	qemu := requireQEMU(t)
	goroutines, fds := runtime.NumGoroutine(), openFDs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cfg := vmConfig(t, qemu, MachineQ35)
	cfg.AgentTransport = hypervisor.TransportVhostUserVsock
	q := New()
	if err := q.CreateVM(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := q.StartVM(ctx); err == nil {
		q.StopVM(ctx)
		t.Fatal("StartVM with a bogus kernel succeeded")
	}
	waitDone(t, q, time.Second)
	select {
	case <-q.vsock.Done():
	default:
		t.Error("vsock backend still running after a failed start")
	}
	if _, err := os.Stat(cfg.StateDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("state directory left behind: %v", err)
	}
	for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > goroutines || openFDs(t) > fds; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("left behind: goroutines %d → %d, fds %d → %d", goroutines, runtime.NumGoroutine(), fds, openFDs(t))
		}
	}
}

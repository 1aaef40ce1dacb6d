//go:build integration

// Package integration boots real VMs under QEMU with the real agent. It needs
// root, QEMU and a guest image (make guest-image; KASA_TEST_GUEST_DIR). With
// CI=true a missing prerequisite fails the test instead of skipping it.
package integration

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kasa-runtime/kasa/configuration"
	"github.com/kasa-runtime/kasa/virtcontainers"
	"github.com/kasa-runtime/kasa/virtcontainers/vmmuser"
)

// requireVM stops the test unless root, QEMU and the guest image are there.
func requireVM(t *testing.T) string {
	t.Helper()
	missing := func(what string) {
		if os.Getenv("CI") == "true" {
			t.Fatalf("prerequisite missing under CI: %s", what)
		}
		t.Skipf("needs %s", what)
	}
	if os.Geteuid() != 0 {
		missing("root")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		missing("qemu-system-x86_64 (apt-get install qemu-system-x86)")
	}
	dir := os.Getenv("KASA_TEST_GUEST_DIR")
	if dir == "" {
		missing("KASA_TEST_GUEST_DIR pointing at `make guest-image` output")
	}
	for _, f := range []string{"vmlinuz", "initrd.img"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			missing("guest image file " + filepath.Join(dir, f))
		}
	}
	return dir
}

// testConfig is the embedded default configuration pointed at the test's
// guest image.
func testConfig(t *testing.T) *configuration.Config {
	dir := requireVM(t)
	cfg := configuration.Default()
	cfg.Hypervisor.Kernel = filepath.Join(dir, "vmlinuz")
	cfg.Hypervisor.Initrd = filepath.Join(dir, "initrd.img")
	cfg.Agent.DialTimeout = 60 * time.Second
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func newID(t *testing.T) string {
	var b [6]byte
	rand.Read(b[:])
	return "it-" + hex.EncodeToString(b[:])
}

// assertNothingLeft fails the test if a hypervisor process or the state
// directory of sandbox id remains.
func assertNothingLeft(t *testing.T, id string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		procs := qemuProcesses(id)
		_, statErr := os.Stat(filepath.Join(virtcontainers.VMStateRoot, id))
		uid := vmmuser.Lookup(id)
		if len(procs) == 0 && os.IsNotExist(statErr) && uid == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox %s left behind: processes %v, state dir error %v, VMM uid %d still allocated", id, procs, statErr, uid)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// qemuProcesses lists pids whose command line names sandbox id.
func qemuProcesses(id string) []string {
	var out []string
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range dirs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if strings.Contains(string(b), "sandbox-"+id) {
			out = append(out, filepath.Base(filepath.Dir(p)))
		}
	}
	return out
}

// assertConfined checks, from the host, how the hypervisor process pid is
// locked down: with rootless, not uid 0, in the VMM range, no capabilities,
// no_new_privs; always QEMU's seccomp filter (mode 2) and a network
// namespace of its own.
func assertConfined(t *testing.T, pid int, rootless bool) {
	t.Helper()
	fields := procStatus(t, pid)
	if got := fields["Seccomp"]; got != "2" {
		t.Errorf("hypervisor Seccomp = %q, want 2 (filter)", got)
	}
	if rootless {
		uids := strings.Fields(fields["Uid"])
		gids := strings.Fields(fields["Gid"])
		if len(uids) != 4 || len(gids) != 4 {
			t.Fatalf("Uid %q Gid %q", fields["Uid"], fields["Gid"])
		}
		for i, u := range append(uids, gids...) {
			n, _ := strconv.ParseUint(u, 10, 32)
			if n < uint64(vmmuser.Base) || n >= uint64(vmmuser.Base+vmmuser.Count) {
				t.Errorf("hypervisor id #%d = %s, want one from the VMM range %d+", i, u, vmmuser.Base)
			}
		}
		for _, c := range []string{"CapInh", "CapPrm", "CapEff", "CapAmb"} {
			if got := fields[c]; strings.Trim(got, "0") != "" {
				t.Errorf("hypervisor %s = %s, want none", c, got)
			}
		}
		if got := fields["NoNewPrivs"]; got != "1" {
			t.Errorf("hypervisor NoNewPrivs = %q, want 1", got)
		}
		if got := fields["Groups"]; got != "" {
			t.Errorf("hypervisor supplementary groups = %q, want none under TCG", got)
		}
	}
	host, err1 := os.Readlink("/proc/self/ns/net")
	vmm, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err1 != nil || err2 != nil || host == vmm {
		t.Errorf("hypervisor network namespace %s (%v), the test's %s (%v): want its own", vmm, err2, host, err1)
	}
}

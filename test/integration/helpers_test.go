//go:build integration

// Package integration boots real VMs under QEMU with the real agent. It needs
// root, QEMU and a guest image (make guest-image; KASA_TEST_GUEST_DIR). With
// CI=true a missing prerequisite fails the test instead of skipping it.
package integration

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kasa-runtime/kasa/configuration"
	"github.com/kasa-runtime/kasa/virtcontainers"
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
		if len(procs) == 0 && os.IsNotExist(statErr) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox %s left behind: processes %v, state dir error %v", id, procs, statErr)
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

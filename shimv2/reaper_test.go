package shimv2

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kasa-runtime/kasa/virtcontainers"
	"github.com/kasa-runtime/kasa/virtcontainers/fsshare"
	"github.com/kasa-runtime/kasa/virtcontainers/vmmuser"
)

// testRootsEnv points a reaper started from the test binary at the test's
// state roots.
const testRootsEnv = "KASA_SHIMV2_TEST_ROOTS"

func setRoots(dir string) {
	virtcontainers.SandboxStateRoot = filepath.Join(dir, "sbs")
	virtcontainers.VMStateRoot = filepath.Join(dir, "vm")
	fsshare.Root = filepath.Join(dir, "shared")
	vmmuser.Dir = filepath.Join(dir, "vmm-uid")
}

// The test binary is also the shim's own commands (the reaper), as
// containerd-shim-kasa-v2 is.
func TestMain(m *testing.M) {
	if dir := os.Getenv(testRootsEnv); dir != "" {
		setRoots(dir)
	}
	if code, ok := OwnCommand(os.Args, os.Stdout); ok {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// When the shim's end of the pipe closes (the shim died), the reaper cleans
// up a sandbox whose state is still there, and leaves alone one that its
// shim stopped.
func TestReaperCleansUpAfterDeadShim(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(testRootsEnv, dir)
	old := []string{virtcontainers.SandboxStateRoot, virtcontainers.VMStateRoot, fsshare.Root, vmmuser.Dir}
	t.Cleanup(func() {
		virtcontainers.SandboxStateRoot, virtcontainers.VMStateRoot, fsshare.Root, vmmuser.Dir = old[0], old[1], old[2], old[3]
	})
	setRoots(dir)
	shared := filepath.Join(fsshare.Root, "pod-r")
	if err := os.MkdirAll(shared, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(virtcontainers.SandboxStateRoot, "pod-r"), 0o700); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(virtcontainers.SandboxStateRoot, "pod-r", "state.json")
	if err := os.WriteFile(state, []byte(`{"id":"pod-r","shared_dir":"`+shared+`","vm_state_dir":"`+filepath.Join(virtcontainers.VMStateRoot, "pod-r")+`"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	w, err := startReaperProcess("pod-r")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if _, err := os.Stat(state); err != nil {
		t.Fatalf("the reaper cleaned up while the shim lives: %v", err)
	}
	w.Close() // as the shim's exit does
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, errState := os.Stat(state)
		_, errShared := os.Stat(shared)
		if os.IsNotExist(errState) && os.IsNotExist(errShared) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the shim's end: state %v, shared directory %v; want both gone", errState, errShared)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

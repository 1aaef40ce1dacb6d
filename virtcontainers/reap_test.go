package virtcontainers

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/kasa-runtime/kasa/virtcontainers/fsshare"
	"github.com/kasa-runtime/kasa/virtcontainers/vmmuser"
)

// testRoots points every state root of this package at a temporary
// directory for the test.
func testRoots(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	old := []string{SandboxStateRoot, VMStateRoot, fsshare.Root, vmmuser.Dir}
	SandboxStateRoot, VMStateRoot = filepath.Join(dir, "sbs"), filepath.Join(dir, "vm")
	fsshare.Root, vmmuser.Dir = filepath.Join(dir, "shared"), filepath.Join(dir, "vmm-uid")
	t.Cleanup(func() { SandboxStateRoot, VMStateRoot, fsshare.Root, vmmuser.Dir = old[0], old[1], old[2], old[3] })
	return dir
}

// A sandbox whose owner died is reaped; one whose owner lives, or whose
// owner is unknown, is not.
func TestReapOrphans(t *testing.T) {
	testRoots(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Skip("no true:", err)
	}
	self := os.Getpid()
	for _, st := range []*sandboxState{
		{ID: "orphan", OwnerPID: dead.Process.Pid, OwnerStart: 12345, OwnerPIDNS: pidNamespace()},
		{ID: "recycled", OwnerPID: self, OwnerStart: procStartTime(self) + 1, OwnerPIDNS: pidNamespace()}, // same pid, another process
		{ID: "alive", OwnerPID: self, OwnerStart: procStartTime(self), OwnerPIDNS: pidNamespace()},
		{ID: "elsewhere", OwnerPID: dead.Process.Pid, OwnerStart: 12345, OwnerPIDNS: "pid:[1]"}, // another pid namespace's
		{ID: "unknown"},
	} {
		st.VMStateDir = filepath.Join(VMStateRoot, st.ID)
		st.SharedDir = filepath.Join(fsshare.Root, st.ID)
		for _, d := range []string{st.VMStateDir, st.SharedDir} {
			if err := os.MkdirAll(d, 0o700); err != nil {
				t.Fatal(err)
			}
		}
		if err := saveState(st); err != nil {
			t.Fatal(err)
		}
	}
	if procStartTime(self) == 0 {
		t.Fatal("no start time for this process")
	}
	reaped, err := ReapOrphans(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(reaped)
	if !slices.Equal(reaped, []string{"orphan", "recycled"}) {
		t.Errorf("reaped %v, want orphan and recycled", reaped)
	}
	for id, want := range map[string]bool{"orphan": false, "recycled": false, "alive": true, "elsewhere": true, "unknown": true} {
		if HasState(id) != want {
			t.Errorf("%s: state kept = %v, want %v", id, !want, want)
		}
		_, err := os.Stat(filepath.Join(fsshare.Root, id))
		if (err == nil) != want {
			t.Errorf("%s: shared directory kept = %v, want %v", id, err == nil, want)
		}
	}
}

// A sandbox whose pod network namespace is gone (its manager removed it)
// is cleaned up all the same: its taps went with the namespace.
func TestCleanupWithoutNetNS(t *testing.T) {
	testRoots(t)
	gone := filepath.Join(t.TempDir(), "netns-gone")
	if err := os.WriteFile(gone, nil, 0o600); err != nil { // what an unmounted pin leaves
		t.Fatal(err)
	}
	st := &sandboxState{ID: "nonet", NetNS: gone, Taps: []tapState{{Name: "tap0_kasa", Index: 7, VethIndex: 3}},
		VMStateDir: filepath.Join(VMStateRoot, "nonet"), SharedDir: filepath.Join(fsshare.Root, "nonet")}
	if err := saveState(st); err != nil {
		t.Fatal(err)
	}
	if netnsExists(gone) || !netnsExists("/proc/self/ns/net") {
		t.Fatal("netnsExists cannot tell a namespace from a plain file")
	}
	if err := CleanupSandbox(context.Background(), "nonet"); err != nil {
		t.Fatal(err)
	}
	if HasState("nonet") {
		t.Error("state kept")
	}
}

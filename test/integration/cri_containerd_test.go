//go:build integration

package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/kasa-runtime/kasa/test/ctrtest"
)

// The CRI tests run against two containerds: Debian's 1.6 (containerd and
// ctr on PATH, config version 2) and containerd 2.x built by `make
// containerd2` (KASA_TEST_CONTAINERD2, default bin/containerd2/containerd,
// config version 3, with its own ctr and runc shim beside it).
//
// To keep CI's time in bounds, only these run on both: TestCRIPod,
// TestCRICrictl, TestCRIShimKilled and TestCRITest (critest's focus set). TestCRISharedPIDNamespace, TestCRIFailures and
// TestCRIConfinedVMM run on 1.6 only: what they check is the shim's and the
// agent's, not what containerd sends.

// containerdUnderTest is one containerd the CRI tests run against.
type containerdUnderTest struct {
	// name is the subtest's: "containerd-1.6", "containerd-2.4".
	name    string
	release ctrtest.Release
	// opts points the harness at it; nil for Debian's, on PATH.
	opts func(*ctrtest.Options)
}

// containerd2Path is containerd 2.x's binary: KASA_TEST_CONTAINERD2, or
// bin/containerd2/containerd of this repository.
func containerd2Path() string {
	if p := os.Getenv("KASA_TEST_CONTAINERD2"); p != "" {
		return p
	}
	repo, _ := filepath.Abs("../..")
	return filepath.Join(repo, "bin", "containerd2", "containerd")
}

// onContainerds runs body as one subtest per containerd: Debian's 1.6 (on
// PATH) and containerd 2.x (containerd2Path). A missing containerd 2.x
// skips its subtest outside CI, saying why, and fails it under CI=true.
func onContainerds(t *testing.T, body func(t *testing.T, ctd containerdUnderTest)) {
	name, rel := "containerd-1", ctrtest.Release{}
	if p, err := exec.LookPath("containerd"); err == nil {
		if r, err := ctrtest.BinaryRelease(p); err == nil {
			name, rel = "containerd-"+r.String(), r
		}
	}
	t.Run(name, func(t *testing.T) { body(t, containerdUnderTest{name: name, release: rel}) })

	path := containerd2Path()
	name, rel = "containerd-2", ctrtest.Release{}
	r, relErr := ctrtest.BinaryRelease(path)
	if relErr == nil {
		name, rel = "containerd-"+r.String(), r
	}
	t.Run(name, func(t *testing.T) {
		if relErr != nil {
			ctrtest.Missing(t, "containerd 2.x at %s (make containerd2; KASA_TEST_CONTAINERD2 names another): %v", path, relErr)
		}
		if !rel.V2() {
			t.Fatalf("%s is containerd %s, not 2.x", path, rel.Text)
		}
		dir := filepath.Dir(path)
		for _, b := range []string{"ctr", "containerd-shim-runc-v2"} {
			if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
				ctrtest.Missing(t, "%s beside %s (make containerd2)", b, path)
			}
		}
		body(t, containerdUnderTest{name: name, release: rel, opts: func(o *ctrtest.Options) {
			o.Containerd, o.Ctr = path, filepath.Join(dir, "ctr")
			// Its own runc shim, first on containerd's PATH.
			o.BinDirs = append([]string{dir}, o.BinDirs...)
		}})
	})
}

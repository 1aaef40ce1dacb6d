package pid1

import (
	"os"
	"path/filepath"
	"testing"
)

// moveTreeExcept moves an initramfs into the tmpfs (the source is emptied as
// it goes) but copies a read-only image's tree (keep), and in both leaves
// the skipped paths alone.
func TestMoveTreeExcept(t *testing.T) {
	for _, keep := range []bool{false, true} {
		src, dst := t.TempDir(), t.TempDir()
		for _, d := range []string{"bin", "kasa/bin", "etc"} {
			if err := os.MkdirAll(filepath.Join(src, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(src, "etc/hosts"), []byte("127.0.0.1 localhost\n"), 0o640); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, "kasa/bin/agent"), []byte("ELF"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/kasa/bin/busybox", filepath.Join(src, "bin/sh")); err != nil {
			t.Fatal(err)
		}
		skip := map[string]bool{filepath.Join(src, "kasa/bin"): true}
		if err := moveTreeExcept(src, dst, skip, keep); err != nil {
			t.Fatalf("keep=%v: %v", keep, err)
		}
		if b, err := os.ReadFile(filepath.Join(dst, "etc/hosts")); err != nil || string(b) != "127.0.0.1 localhost\n" {
			t.Errorf("keep=%v: etc/hosts in the new root: %q, %v", keep, b, err)
		}
		if fi, err := os.Stat(filepath.Join(dst, "etc/hosts")); err != nil || fi.Mode().Perm() != 0o640 {
			t.Errorf("keep=%v: etc/hosts mode: %v, %v", keep, fi, err)
		}
		if target, err := os.Readlink(filepath.Join(dst, "bin/sh")); err != nil || target != "/kasa/bin/busybox" {
			t.Errorf("keep=%v: bin/sh: %q, %v", keep, target, err)
		}
		if _, err := os.Stat(filepath.Join(dst, "kasa/bin/agent")); !os.IsNotExist(err) {
			t.Errorf("keep=%v: the skipped directory was copied: %v", keep, err)
		}
		if _, err := os.Stat(filepath.Join(src, "kasa/bin/agent")); err != nil {
			t.Errorf("keep=%v: the skipped directory was touched: %v", keep, err)
		}
		_, err := os.Lstat(filepath.Join(src, "etc/hosts"))
		if keep && err != nil {
			t.Errorf("keep: the source lost etc/hosts: %v", err)
		}
		if !keep && !os.IsNotExist(err) {
			t.Errorf("move: the source still has etc/hosts: %v", err)
		}
	}
}

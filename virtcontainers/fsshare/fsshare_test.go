package fsshare

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/mount"
	"golang.org/x/sys/unix"
)

func TestUnescapeMountinfo(t *testing.T) {
	if got := unescapeMountinfo(`/run/a\040b\011c`); got != "/run/a b\tc" {
		t.Fatalf("got %q", got)
	}
}

func TestGuestStorage(t *testing.T) {
	s := Open("sb1", 8192)
	st := s.GuestStorage()
	if st.GetSource() != MountTag || st.GetMountPoint() != GuestRoot || !strings.Contains(strings.Join(st.GetOptions(), ","), "msize=8192") {
		t.Fatalf("storage = %v", st)
	}
	if got := s.guestPath(filepath.Join(s.HostDir, "c1", "rootfs")); got != "/run/kasa/shared/c1/rootfs" {
		t.Fatalf("guest path = %q", got)
	}
}

// Real mounts: needs root (run by make test-integration).
func TestIntegrationShareMountsAndCleanup(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root")
		}
		t.Skip("needs root")
	}
	Root = t.TempDir()
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "hello"), []byte("hi"), 0o644)
	hostFile := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(hostFile, []byte("nameserver 1.1.1.1\n"), 0o644)

	s, err := New("sb1", 8192)
	if err != nil {
		t.Fatal(err)
	}
	guest, err := s.MountRootfs("c1", []mount.Mount{{Type: "bind", Source: src, Options: []string{"rbind", "rw"}}}, "")
	if err != nil {
		t.Fatal(err)
	}
	if guest != "/run/kasa/shared/c1/rootfs" {
		t.Fatalf("guest rootfs %q", guest)
	}
	if b, err := os.ReadFile(filepath.Join(s.HostDir, "c1", "rootfs", "hello")); err != nil || string(b) != "hi" {
		t.Fatalf("rootfs content: %q %v", b, err)
	}
	// A tmpfs below the volume's source: recursive read-only reaches it too.
	sub := filepath.Join(src, "sub")
	os.Mkdir(sub, 0o755)
	if err := unix.Mount("tmpfs", sub, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(sub, unix.MNT_DETACH) })
	roGuest, err := s.BindVolume("c1", 0, Volume{Source: src, Recursive: true, RecursiveReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	roHost := filepath.Join(s.HostDir, strings.TrimPrefix(roGuest.GuestPath, GuestRoot+"/"))
	if err := os.WriteFile(filepath.Join(roHost, "x"), nil, 0o644); err == nil {
		t.Fatal("wrote into a read-only volume")
	}
	if err := os.WriteFile(filepath.Join(roHost, "sub", "x"), nil, 0o644); err == nil {
		t.Fatal("wrote into a mount below a read-only volume")
	}
	rwGuest, err := s.BindVolume("c1", 1, Volume{Source: hostFile})
	if err != nil {
		t.Fatal(err)
	}
	// What the guest writes into a share is never set-uid or a device on
	// the host: every mount of it is nosuid and nodev.
	for _, p := range []string{filepath.Join(s.HostDir, "c1", "rootfs"), roHost, filepath.Join(roHost, "sub"),
		filepath.Join(s.HostDir, strings.TrimPrefix(rwGuest.GuestPath, GuestRoot+"/"))} {
		var st unix.Statfs_t
		if err := unix.Statfs(p, &st); err != nil {
			t.Fatal(err)
		}
		if st.Flags&unix.ST_NOSUID == 0 || st.Flags&unix.ST_NODEV == 0 {
			t.Errorf("%s: mount flags %#x lack nosuid or nodev", p, st.Flags)
		}
	}
	if _, err := s.BindVolume("c1", 2, Volume{Source: "/nonexistent/dir"}); err == nil {
		t.Fatal("volume with a missing source succeeded")
	}

	if err := s.RemoveContainer("c1"); err != nil {
		t.Fatal(err)
	}
	if left, _ := mountsUnder(s.HostDir); len(left) != 0 {
		t.Fatalf("mounts left: %v", left)
	}
	if _, err := os.Stat(filepath.Join(src, "hello")); err != nil {
		t.Fatalf("cleanup touched the volume source: %v", err)
	}
	if err := s.Destroy(); err != nil {
		t.Fatal(err)
	}
	if err := s.Destroy(); err != nil {
		t.Fatalf("second Destroy: %v", err)
	}
	if _, err := os.Stat(s.HostDir); !os.IsNotExist(err) {
		t.Fatalf("shared dir still there: %v", err)
	}
}

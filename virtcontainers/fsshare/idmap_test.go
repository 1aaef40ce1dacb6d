package fsshare

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/mount"
	"golang.org/x/sys/unix"
)

// testIDFirst is the host id of the test's user namespace root: the last
// block below 2^31, which no sandbox takes before all others.
const testIDFirst = 1<<31 - IDRangeSize

// The test binary doubles as a process in a user namespace like an
// unprivileged virtiofsd's: "hold" just waits, "write" writes a file,
// "remove" removes one, "mkdir" makes a world-writable directory.
func init() {
	switch os.Getenv("KASA_USERNS_HELPER") {
	case "":
		return
	case "hold":
		select {}
	case "write":
		err := os.WriteFile(os.Args[1], []byte("x"), 0o644)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	case "remove":
		if err := os.Remove(os.Args[1]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	case "mkdir":
		if err := os.Mkdir(os.Args[1], 0o777); err != nil || os.Chmod(os.Args[1], 0o1777) != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	os.Exit(0)
}

// inTestUserns runs the helper as uid (and gid) id of a user namespace
// mapped as the share's.
func inTestUserns(t *testing.T, id uint32, helper string, args ...string) {
	t.Helper()
	cmd := exec.Command("/proc/self/exe", args...)
	cmd.Env = append(os.Environ(), "KASA_USERNS_HELPER="+helper)
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	inUserns(cmd.SysProcAttr, testIDFirst)
	cmd.SysProcAttr.Credential = &syscall.Credential{Uid: id, Gid: id, Groups: []uint32{}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %v as %d in the user namespace: %v: %s", helper, args, id, err, out)
	}
}

// walkableTempDir is a temporary directory that the namespace's ids may
// walk through, on a disk filesystem: under /var/tmp, since /tmp may be a
// tmpfs, which Linux before 6.3 cannot idmap.
func walkableTempDir(t *testing.T) string {
	dir, err := os.MkdirTemp("/var/tmp", "kasa-idmap-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func ownerOf(t *testing.T, path string) uint32 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != st.Gid {
		t.Fatalf("%s owned by %d:%d", path, st.Uid, st.Gid)
	}
	return st.Uid
}

// Real mounts and a real user namespace: needs root (make test-integration).
// A share whose virtiofsd runs without root: a containerd-style overlay
// root filesystem and a volume are idmapped, so what the namespace's ids
// write lands with the same ids on disk (copy-up included); a volume on a
// filesystem that cannot be idmapped is refused by name; nothing is left.
func TestIntegrationIdmappedShare(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root")
		}
		t.Skip("needs root")
	}
	Root, StagingRoot, DoorRoot = walkableTempDir(t), filepath.Join(t.TempDir(), "idmap"), filepath.Join(walkableTempDir(t), "door")
	hold := exec.Command("/proc/self/exe")
	hold.Env = append(os.Environ(), "KASA_USERNS_HELPER=hold")
	hold.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	inUserns(hold.SysProcAttr, testIDFirst)
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hold.Process.Kill(); hold.Wait() })
	ns, err := openUserns(hold.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := openUserns(os.Getpid()); err == nil {
		t.Fatal("openUserns accepted the host's user namespace")
	}

	s, err := New("sb-idmap", 8192)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Destroy() })
	if _, err := s.openDoor(testIDFirst); err != nil {
		t.Fatal(err)
	}
	s.userns, s.usernsRoot = ns, testIDFirst

	// containerd's overlayfs snapshots: a lower layer with a file of uid
	// 1000, an upper and a work directory, all under one directory.
	snaps := walkableTempDir(t)
	for _, d := range []string{"1/fs", "2/fs", "2/work"} {
		os.MkdirAll(filepath.Join(snaps, d), 0o755)
	}
	lowerFile := filepath.Join(snaps, "1/fs/owned1000")
	os.WriteFile(lowerFile, []byte("l"), 0o666)
	os.Chown(lowerFile, 1000, 1000)
	os.WriteFile(filepath.Join(snaps, "1/fs/doomed"), nil, 0o644)
	rootfs := []mount.Mount{{Type: "overlay", Source: "overlay", Options: []string{
		"index=off", "lowerdir=" + filepath.Join(snaps, "1/fs"), "upperdir=" + filepath.Join(snaps, "2/fs"), "workdir=" + filepath.Join(snaps, "2/work")}}}
	start := time.Now()
	if _, err := s.MountRootfs("c1", rootfs, ""); err != nil {
		t.Fatal(err)
	}
	t.Logf("overlay root filesystem on idmapped layers mounted in %v", time.Since(start))
	merged := filepath.Join(s.HostDir, "c1", "rootfs")
	// Through the idmapped layers the host sees the namespace's ids.
	if got := ownerOf(t, filepath.Join(merged, "owned1000")); got != testIDFirst+1000 {
		t.Errorf("lower file through the share owned by %d, want %d", got, testIDFirst+1000)
	}
	inTestUserns(t, 0, "write", filepath.Join(merged, "byroot"))
	inTestUserns(t, 0, "mkdir", filepath.Join(merged, "d"))
	inTestUserns(t, 1234, "write", filepath.Join(merged, "d", "by1234"))
	inTestUserns(t, 1000, "write", filepath.Join(merged, "owned1000")) // copy-up
	inTestUserns(t, 0, "remove", filepath.Join(merged, "doomed"))      // a whiteout, made by overlayfs itself
	var wh unix.Stat_t
	if err := unix.Lstat(filepath.Join(snaps, "2/fs/doomed"), &wh); err != nil || wh.Mode&unix.S_IFMT != unix.S_IFCHR || wh.Rdev != 0 {
		t.Errorf("removing a lower file left %+v (%v) in the upper layer, want a whiteout (character device 0:0)", wh, err)
	}
	for name, want := range map[string]uint32{"byroot": 0, "d": 0, "d/by1234": 1234, "owned1000": 1000} {
		if got := ownerOf(t, filepath.Join(snaps, "2/fs", name)); got != want {
			t.Errorf("upper %s owned by %d on disk, want %d", name, got, want)
		}
	}

	// A volume on a disk filesystem (the test's temporary directory).
	vol := walkableTempDir(t)
	guest, err := s.BindVolume("c1", 0, Volume{Source: vol, Recursive: true})
	if err != nil {
		t.Fatal(err)
	}
	volHost := filepath.Join(s.HostDir, strings.TrimPrefix(guest.GuestPath, GuestRoot+"/"))
	inTestUserns(t, 0, "mkdir", filepath.Join(volHost, "w"))
	inTestUserns(t, 1234, "write", filepath.Join(volHost, "w", "u"))
	if got := ownerOf(t, filepath.Join(vol, "w", "u")); got != 1234 {
		t.Errorf("volume file owned by %d on disk, want 1234", got)
	}

	// An overlayfs mount cannot be idmapped on any Linux: refused by name.
	ovl := t.TempDir()
	for _, d := range []string{"l", "u", "w", "m"} {
		os.Mkdir(filepath.Join(ovl, d), 0o755)
	}
	m := filepath.Join(ovl, "m")
	if err := unix.Mount("overlay", m, "overlay", 0, fmt.Sprintf("lowerdir=%s/l,upperdir=%s/u,workdir=%s/w", ovl, ovl, ovl)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(m, unix.MNT_DETACH) })
	_, err = s.BindVolume("c1", 1, Volume{Source: m, Recursive: true})
	if !errors.Is(err, ErrNotIdmappable) || !strings.Contains(err.Error(), m) || !strings.Contains(err.Error(), "overlay") {
		t.Fatalf("volume on overlayfs: %v; want ErrNotIdmappable naming %s and overlay", err, m)
	}
	t.Log(err)
	// Below an idmappable source, the mount that is not is the one named.
	nested := walkableTempDir(t)
	sub := filepath.Join(nested, "sub")
	os.Mkdir(sub, 0o755)
	if err := unix.Mount(m, sub, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(sub, unix.MNT_DETACH) })
	_, err = s.BindVolume("c1", 2, Volume{Source: nested, Recursive: true})
	if !errors.Is(err, ErrNotIdmappable) || !strings.Contains(err.Error(), sub+" (overlay)") || strings.Contains(err.Error(), nested+" (") {
		t.Fatalf("volume with an overlayfs mount below it: %v; want ErrNotIdmappable naming %s (overlay) only", err, sub)
	}
	t.Log(err)

	// A root filesystem that is not an overlay: staged, then idmapped.
	bundle := walkableTempDir(t)
	os.WriteFile(filepath.Join(bundle, "hello"), nil, 0o644)
	if _, err := s.MountRootfs("c2", nil, bundle); err != nil {
		t.Fatal(err)
	}
	if got := ownerOf(t, filepath.Join(s.HostDir, "c2", "rootfs", "hello")); got != testIDFirst {
		t.Errorf("bundle rootfs file through the share owned by %d, want %d", got, testIDFirst)
	}

	if err := s.Destroy(); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{Root, StagingRoot, DoorRoot} {
		if left, _ := mountsUnder(dir); len(left) > 0 {
			t.Errorf("mounts left under %s: %v", dir, left)
		}
		if entries, _ := os.ReadDir(dir); len(entries) > 0 {
			t.Errorf("left in %s: %v", dir, entries)
		}
	}
	if s.userns != nil {
		t.Error("Destroy kept the user namespace's descriptor")
	}
}

package fsshare

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// How volumes reach virtiofsd's view of the share, with the real C
// virtiofsd (its own mount namespace): "ro" makes the bind read-only and
// leaves a mount below it writable, as runc does; "rro" makes both
// read-only; a mount the node makes below the source after the binds
// reaches virtiofsd through a FollowHost (rslave) volume only, never
// through a private one, even though the source is a shared mount. The
// node's own namespace holds no copy of any volume, so the node can
// remove a directory below a source that has a mount in a copy. Needs
// root (make test-integration).
func TestIntegrationVolumeSemantics(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root")
		}
		t.Skip("needs root")
	}
	const daemon = "/usr/lib/qemu/virtiofsd"
	if _, err := os.Stat(daemon); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("needs %s: %v", daemon, err)
		}
		t.Skipf("needs %s", daemon)
	}
	Root = t.TempDir()
	// Joining virtiofsd's namespace never moves the main thread, by which
	// /proc/self shows the process.
	own, _ := os.Readlink("/proc/self/ns/mnt")
	t.Cleanup(func() {
		if now, _ := os.Readlink("/proc/self/ns/mnt"); now != own {
			t.Errorf("the main thread is in mount namespace %s, not %s", now, own)
		}
	})
	// The source is a shared mount, as HostToContainer requires of it, with
	// a writable tmpfs below it.
	src := t.TempDir()
	mustMount(t, src, src, "", unix.MS_BIND)
	mustMount(t, "", src, "", unix.MS_SHARED)
	sub := filepath.Join(src, "sub")
	for _, d := range []string{"sub", "late", "gone"} {
		os.Mkdir(filepath.Join(src, d), 0o755)
	}
	mustMount(t, "tmpfs", sub, "tmpfs", 0)
	gone := filepath.Join(src, "gone")
	mustMount(t, "tmpfs", gone, "tmpfs", 0)

	s, err := New("sb1", 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Destroy() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, conn, err := s.StartVirtioFSD(ctx, daemon, filepath.Join(t.TempDir(), "vfs.sock"), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close() // virtiofsd sets its sandbox up once connected
	t.Cleanup(func() { d.Stop() })

	volumes := map[string]Volume{
		"ro":      {Source: src, Recursive: true, ReadOnly: true},
		"rro":     {Source: src, Recursive: true, RecursiveReadOnly: true},
		"private": {Source: src, Recursive: true},
		"rslave":  {Source: src, Recursive: true, FollowHost: true},
		"bind":    {Source: src},
	}
	// Each volume as virtiofsd sees it (through its root), and as its
	// mount table names it.
	root := "/proc/" + strconv.Itoa(serverPID(d.PID())) + "/root"
	view, rel := map[string]string{}, map[string]string{}
	i := 0
	for name, v := range volumes {
		g, err := s.BindVolume("c1", i, v)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		rel[name] = strings.TrimPrefix(g.GuestPath, GuestRoot)
		view[name] = root + rel[name]
		i++
		// The guest is told of the mounts below the source if the bind
		// took them along, and of their state in the share.
		want := []Submount{{Path: "gone", ReadOnly: v.RecursiveReadOnly}, {Path: "sub", ReadOnly: v.RecursiveReadOnly}}
		slices.SortFunc(g.Submounts, func(a, b Submount) int { return strings.Compare(a.Path, b.Path) })
		if v.Recursive != reflect.DeepEqual(g.Submounts, want) {
			t.Errorf("%s: submounts %+v", name, g.Submounts)
		}
	}
	if left, _ := mountsUnder(s.containerDir("c1")); len(left) != 0 {
		t.Errorf("volumes in the node's mount namespace: %v", left)
	}
	writable := func(p string) bool {
		err := os.WriteFile(filepath.Join(p, "probe"), nil, 0o644)
		os.Remove(filepath.Join(p, "probe"))
		if err != nil && !errors.Is(err, unix.EROFS) {
			t.Fatalf("write into %s: %v", p, err)
		}
		return err == nil
	}
	for _, c := range []struct {
		path string
		want bool
	}{
		{view["ro"], false}, {filepath.Join(view["ro"], "sub"), true},
		{view["rro"], false}, {filepath.Join(view["rro"], "sub"), false},
		{view["private"], true}, {filepath.Join(view["private"], "sub"), true},
	} {
		if got := writable(c.path); got != c.want {
			t.Errorf("%s writable = %v, want %v", c.path, got, c.want)
		}
	}
	mounts := virtiofsdMounts(t, d.PID())
	if mounts[rel["bind"]+"/sub"] || !mounts[rel["ro"]+"/sub"] {
		t.Errorf("the mount below the source in virtiofsd's view: under a non-recursive bind %v, under a recursive one %v",
			mounts[rel["bind"]+"/sub"], mounts[rel["ro"]+"/sub"])
	}
	for name, p := range view {
		var st unix.Statfs_t
		for _, q := range []string{p, filepath.Join(p, "sub")} {
			if err := unix.Statfs(q, &st); err != nil {
				t.Fatal(err)
			}
			if st.Flags&unix.ST_NOSUID == 0 || st.Flags&unix.ST_NODEV == 0 {
				t.Errorf("%s (%s): mount flags %#x lack nosuid or nodev", q, name, st.Flags)
			}
		}
	}

	// The node mounts below the source after the binds, and removes a
	// mount below it, and its mount point, as it could under runc.
	late := filepath.Join(src, "late")
	mustMount(t, "tmpfs", late, "tmpfs", 0)
	mounts = virtiofsdMounts(t, d.PID())
	for name := range view {
		if got, want := mounts[rel[name]+"/late"], name == "rslave"; got != want {
			t.Errorf("%s volume: the node's later mount is in virtiofsd's view: %v, want %v", name, got, want)
		}
	}
	if err := unix.Unmount(gone, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(gone); err != nil {
		t.Errorf("removing a directory below a source that the volumes had a mount on: %v", err)
	}
	if err := unix.Unmount(late, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	// A source with more mounts below it than the guest is told of.
	many := t.TempDir()
	for i := 0; i <= MaxSubmounts; i++ {
		d := filepath.Join(many, strconv.Itoa(i))
		os.Mkdir(d, 0o755)
		mustMount(t, "tmpfs", d, "tmpfs", 0)
	}
	if b, err := s.BindVolume("c1", 9, Volume{Source: many, Recursive: true}); err != nil || !b.SubmountsOmitted || len(b.Submounts) != 0 {
		t.Errorf("%d mounts below a source: submounts %d, omitted %v, %v", MaxSubmounts+1, len(b.Submounts), b.SubmountsOmitted, err)
	}

	// The guest can rewrite the share's directories: a container's volumes
	// directory made a symlink to a node directory leads the mount into
	// the share, never onto the node.
	outside := t.TempDir()
	os.MkdirAll(filepath.Join(s.HostDir, "c2"), 0o755)
	if err := os.Symlink(outside, filepath.Join(s.HostDir, "c2", "volumes")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.BindVolume("c2", 0, Volume{Source: src, Recursive: true}); err != nil {
		t.Logf("a volume below a planted symlink: %v", err)
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 || isMount(t, filepath.Join(outside, "0-"+filepath.Base(src))) {
		t.Errorf("a planted symlink led the volume onto the node: %v", entries)
	}
	s.RemoveContainer("c2")

	if err := s.RemoveContainer("c1"); err != nil {
		t.Fatal(err)
	}
	for m := range virtiofsdMounts(t, d.PID()) {
		if strings.HasPrefix(m, "/c1/") {
			t.Errorf("left in virtiofsd's view: %s", m)
		}
	}
	if !isMount(t, sub) {
		t.Fatal("removing the container unmounted the source's own submount")
	}
}

func mustMount(t *testing.T, source, target, fstype string, flags uintptr) {
	t.Helper()
	if err := unix.Mount(source, target, fstype, flags, ""); err != nil {
		t.Fatalf("mount %s on %s: %v", source, target, err)
	}
	if flags&(unix.MS_SHARED|unix.MS_PRIVATE|unix.MS_SLAVE) == 0 {
		t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })
	}
}

// isMount reports whether p is a mount point in the test's namespace.
func isMount(t *testing.T, p string) bool {
	t.Helper()
	mounts, err := mountsUnder(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mounts {
		if m == p {
			return true
		}
	}
	return false
}

// serverPID is the virtiofsd process that serves: the child the C
// daemon forks into its pid namespace, or the daemon itself.
func serverPID(pid int) int {
	if kids := childrenOf(pid); len(kids) == 1 {
		return kids[0]
	}
	return pid
}

// virtiofsdMounts lists the mount points of virtiofsd's view, as paths
// in the share.
func virtiofsdMounts(t *testing.T, pid int) map[string]bool {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(serverPID(pid)) + "/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 {
			out[unescapeMountinfo(f[4])] = true
		}
	}
	return out
}

// The mount(2) fallback of kernels without mount_setattr gives the same
// flags and host propagation in the share.
func TestIntegrationBindTreeClassic(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root")
		}
		t.Skip("needs root")
	}
	src := t.TempDir()
	mustMount(t, src, src, "", unix.MS_BIND)
	mustMount(t, "", src, "", unix.MS_SHARED)
	for _, d := range []string{"sub", "late"} {
		os.Mkdir(filepath.Join(src, d), 0o755)
	}
	mustMount(t, "tmpfs", filepath.Join(src, "sub"), "tmpfs", 0)
	targets := map[string]string{}
	for name, v := range map[string]Volume{
		"ro":      {Source: src, Recursive: true, ReadOnly: true},
		"rro":     {Source: src, Recursive: true, RecursiveReadOnly: true},
		"rslave":  {Source: src, Recursive: true, FollowHost: true},
		"private": {Source: src, Recursive: true},
	} {
		targets[name] = t.TempDir()
		if err := bindTreeClassic(v, targets[name]); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Cleanup(func() { unmountAndRemove(targets[name]) })
	}
	for p, want := range map[string]bool{
		targets["ro"]: false, targets["ro"] + "/sub": true, targets["rro"]: false, targets["rro"] + "/sub": false,
		targets["private"] + "/sub": true,
	} {
		var st unix.Statfs_t
		if err := unix.Statfs(p, &st); err != nil {
			t.Fatal(err)
		}
		if got := st.Flags&unix.ST_RDONLY == 0; got != want || st.Flags&unix.ST_NOSUID == 0 || st.Flags&unix.ST_NODEV == 0 {
			t.Errorf("%s: flags %#x, want writable %v, nosuid, nodev", p, st.Flags, want)
		}
	}
	mustMount(t, "tmpfs", filepath.Join(src, "late"), "tmpfs", 0)
	for name, p := range targets {
		if got := isMount(t, filepath.Join(p, "late")); got != (name == "rslave") {
			t.Errorf("%s: the host's later mount is there: %v", name, got)
		}
	}
}

//go:build integration

package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/test/ctrtest"
)

// CRI's mount propagation modes (runtime.MountPropagation).
const (
	propagationPrivate         = 0
	propagationHostToContainer = 1
	propagationBidirectional   = 2
)

// Volumes as runc mounts them, checked side by side in a runc pod and a
// Kasa pod of the same containerd 2.x (the one whose CRI plugin passes
// recursive_read_only): a read-only hostPath with a tmpfs below its
// source leaves that tmpfs writable (runc's non-recursive "ro"), a
// recursively read-only one does not ("rro"), a HostToContainer one shows
// what the node mounts below the source after the container started
// ("rslave"), a private one does not. A Bidirectional hostPath cannot
// cross the VM: its container is refused with the reason, and leaves
// nothing behind. Kasa runs two pods: one with the default unprivileged
// virtiofsd (volumes attached in the node's share) and one with a root
// virtiofsd (volumes attached in the daemon's own mount namespace, none in
// the node's); each pod's shim reads the configuration file as it starts.
func TestCRIMountSemantics(t *testing.T) {
	dir := requireVM(t)
	_, rel, relErr := containerd2Release()
	ctd := containerd2(t, rel, relErr)
	conf := filepath.Join(t.TempDir(), "configuration.toml")
	configure := func(userns bool) {
		mode := map[bool]string{true: "on", false: "off"}[userns]
		body := fmt.Sprintf("[hypervisor.qemu]\nkernel = %q\ninitrd = %q\nvirtio_fs_userns = %q\n\n[agent.kata]\ndial_timeout = 60\n",
			filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd.img"), mode)
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	configure(true)
	c, ctx := startCRIHarness(t, 8*time.Minute, func(o *ctrtest.Options) {
		ctd.opts(o)
		o.KasaConfigPath = conf
	})

	// The volume source: a shared mount (HostToContainer requires one),
	// with a tmpfs below it before any container starts.
	src := t.TempDir()
	hostMount(t, src, src, "", unix.MS_BIND)
	if err := unix.Mount("", src, "", unix.MS_SHARED, ""); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"sub", "late"} {
		if err := os.Mkdir(filepath.Join(src, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	hostMount(t, "tmpfs", filepath.Join(src, "sub"), "tmpfs", 0)

	mounts := []map[string]any{
		{"container_path": "/ro", "host_path": src, "readonly": true},
		{"container_path": "/rro", "host_path": src, "readonly": true, "recursive_read_only": true},
		{"container_path": "/follow", "host_path": src, "propagation": propagationHostToContainer},
		{"container_path": "/private", "host_path": src, "propagation": propagationPrivate},
	}
	type podUnderTest struct{ handler, name, pod, ctr string }
	var pods []podUnderTest
	for _, p := range []struct {
		handler, name string
		userns        bool
	}{{"runc", "runc", false}, {"kata", "kata", true}, {"kata", "kata-rootvfsd", false}} {
		configure(p.userns)
		podCfg := ctrtest.PodConfig("mounts-" + p.name)
		path, err := c.WriteJSON("mounts-"+p.name+"-pod.json", podCfg)
		if err != nil {
			t.Fatal(err)
		}
		pod := crictl(t, ctx, c, "runp", "--runtime", p.handler, path)
		id := startContainer(t, ctx, c, pod, podCfg, containerConfig("mounts-"+p.name, ctrtest.BusyboxImage, []string{"sleep", "3600"}, mounts...))
		pods = append(pods, podUnderTest{p.handler, p.name, pod, id})
	}
	// With a root virtiofsd the node's namespace holds no copy of a
	// volume; with an unprivileged one it does (so that the kernel locks
	// the flags of the copy in the daemon's namespace).
	for _, p := range pods[1:] {
		in := mountsBelow(filepath.Join("/run/kasa/shared", p.pod, p.ctr, "volumes"))
		if want := p.name == "kata"; (len(in) > 0) != want {
			t.Errorf("%s: volumes in the node's mount namespace: %v, want some: %v", p.name, in, want)
		}
	}
	ok := func(p podUnderTest, script string) bool {
		t.Helper()
		res, err := c.Crictl(ctx, "exec", "--sync", p.ctr, "sh", "-c", script)
		if err != nil {
			t.Fatal(err)
		}
		return res.ExitCode == 0
	}

	for _, p := range pods {
		for _, w := range []struct {
			path string
			want bool
		}{{"/ro", false}, {"/ro/sub", true}, {"/rro", false}, {"/rro/sub", false}, {"/private/sub", true}} {
			if got := ok(p, "touch "+w.path+"/by-"+p.name); got != w.want {
				t.Errorf("%s: writing into %s succeeded: %v, want %v (as runc)", p.name, w.path, got, w.want)
			}
		}
		if _, err := os.Stat(filepath.Join(src, "sub", "by-"+p.name)); err != nil {
			t.Errorf("%s: what the container wrote below the read-only bind is not on the node: %v", p.name, err)
		}
	}

	// The node mounts below the source once the containers run.
	late := filepath.Join(src, "late")
	hostMount(t, "tmpfs", late, "tmpfs", 0)
	if err := os.WriteFile(filepath.Join(late, "marker"), []byte("mounted later"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		// How soon the guest sees it depends on its dentry cache (1 s with
		// virtiofsd's cache=auto); the deadline only bounds a failure.
		start := time.Now()
		for !ok(p, "grep -q 'mounted later' /follow/late/marker") {
			if time.Since(start) > time.Minute {
				t.Errorf("%s: the node's later mount below a HostToContainer volume never reached the container", p.name)
				break
			}
			time.Sleep(time.Second)
		}
		t.Logf("%s: the node's later mount seen in the container after %v", p.name, time.Since(start).Round(time.Millisecond))
		for _, private := range []string{"/private", "/ro"} {
			if ok(p, "test -e "+private+"/late/marker") {
				t.Errorf("%s: the node's later mount reached the private volume %s", p.name, private)
			}
		}
	}

	kata, bidiID := pods[1], ""
	t.Run("Bidirectional refused", func(t *testing.T) {
		bidi := containerConfig("bidirectional", ctrtest.BusyboxImage, []string{"sleep", "60"},
			map[string]any{"container_path": "/both", "host_path": src, "propagation": propagationBidirectional})
		podPath, _ := c.WriteJSON("mounts-kata-pod.json", ctrtest.PodConfig("mounts-kata"))
		ctrPath, _ := c.WriteJSON("bidirectional-ctr.json", bidi)
		// containerd creates the task, and so asks the shim, at start.
		bidiID = crictl(t, ctx, c, "create", "--with-pull", kata.pod, ctrPath, podPath)
		res, err := c.Crictl(ctx, "start", bidiID)
		if err != nil || res.ExitCode == 0 {
			t.Fatalf("a Bidirectional hostPath in a Kasa pod was accepted: %v %v", res, err)
		}
		crictl(t, ctx, c, "rm", bidiID)
		for _, want := range []string{"mount /both: propagation", "rshared", "Bidirectional", "not possible in a VM"} {
			if !strings.Contains(res.Stderr, want) {
				t.Errorf("the refusal does not say %q: %s", want, res.Stderr)
			}
		}
		// Nothing of the refused container: no container, no files or
		// mounts in the pod's share; the pod still works.
		if out := crictl(t, ctx, c, "ps", "-a", "-q", "--pod", kata.pod); out != kata.ctr {
			t.Errorf("containers of the pod after the refusal: %q", out)
		}
		entries, _ := os.ReadDir(filepath.Join("/run/kasa/shared", kata.pod))
		for _, e := range entries {
			if e.Name() != kata.ctr {
				t.Errorf("left in the pod's share: %s", e.Name())
			}
		}
		if !ok(kata, "test -e /follow/late/marker") {
			t.Error("the pod's container is unwell after the refusal")
		}
	})

	// Lazily: virtiofsd may still hold the copy in its view.
	if err := unix.Unmount(late, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		crictl(t, ctx, c, "stopp", p.pod)
		crictl(t, ctx, c, "rmp", p.pod)
	}
	ids := []string{bidiID}
	for _, p := range pods {
		ids = append(ids, p.pod, p.ctr)
	}
	ctrtest.AssertNoLeftovers(t, c, ids...)
}

// mountsBelow lists the node's mount points below dir.
func mountsBelow(dir string) []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			out = append(out, f[4])
		}
	}
	return out
}

// hostMount mounts on the node for the test's length.
func hostMount(t *testing.T, source, target, fstype string, flags uintptr) {
	t.Helper()
	if err := unix.Mount(source, target, fstype, flags, ""); err != nil {
		t.Fatalf("mount %s on %s: %v", source, target, err)
	}
	t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })
}

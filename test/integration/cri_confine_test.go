//go:build integration

package integration

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/test/ctrtest"
	"github.com/kasa-runtime/kasa/virtcontainers/podcgroup"
)

// A pod's VMM as the node sees it, through CRI with the default
// (confined) configuration: QEMU unprivileged, without capabilities, under
// seccomp, in its own network namespace; QEMU and virtiofsd (and, with
// sandbox_cgroup_only, the shim) in the pod's cgroup, charged to it; what
// guest root writes into a hostPath volume (a set-uid binary, a device
// node) is neither set-uid nor a device through the share on the host; the
// cgroup goes with the pod.
func TestCRIConfinedVMM(t *testing.T) {
	for _, sandboxCgroupOnly := range []bool{false, true} {
		t.Run(fmt.Sprintf("sandbox_cgroup_only=%v", sandboxCgroupOnly), func(t *testing.T) {
			testCRIConfinedVMM(t, sandboxCgroupOnly)
		})
	}
}

func testCRIConfinedVMM(t *testing.T, sandboxCgroupOnly bool) {
	dir := requireVM(t)
	conf := filepath.Join(t.TempDir(), "configuration.toml")
	body := fmt.Sprintf("[hypervisor.qemu]\nkernel = %q\ninitrd = %q\n\n[agent.kata]\ndial_timeout = 60\n\n[runtime]\nsandbox_cgroup_only = %v\n",
		filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd.img"), sandboxCgroupOnly)
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	c, ctx := startCRIHarness(t, 4*time.Minute, func(o *ctrtest.Options) { o.KasaConfigPath = conf })

	parent := "/kasa-it-" + filepath.Base(t.TempDir())
	t.Cleanup(func() { removeCgroupTree(parent) })
	podCfg := ctrtest.PodConfig("confined")
	podCfg["linux"].(map[string]any)["cgroup_parent"] = parent
	podID := runPod(t, ctx, c, podCfg)
	vol := t.TempDir()
	id := startContainer(t, ctx, c, podID, podCfg, containerConfig("writer", ctrtest.BusyboxImage, []string{"sleep", "3600"},
		map[string]any{"container_path": "/vol", "host_path": vol}))

	procs := qemuProcesses(podID)
	if len(procs) != 1 {
		t.Fatalf("QEMU processes of the pod: %v", procs)
	}
	qemuPID, _ := strconv.Atoi(procs[0])
	assertConfined(t, qemuPID, true)

	want := parent + "/" + podID
	inGroup := map[string]int{"QEMU": qemuPID}
	virtiofsds := pidsWithCmdline("source=/run/kasa-virtiofsd/" + podID + "/share")
	for _, pid := range virtiofsds {
		inGroup["virtiofsd "+strconv.Itoa(pid)] = pid
	}
	if len(inGroup) < 2 {
		t.Fatalf("no virtiofsd serving /run/kasa-virtiofsd/%s/share", podID)
	}
	userns := assertVirtiofsdUnprivileged(t, podID, virtiofsds)
	if sandboxCgroupOnly {
		shims := pidsWithCmdline("-id " + podID)
		if len(shims) != 1 {
			t.Fatalf("the pod's shim: %v", shims)
		}
		inGroup["shim"] = shims[0]
	}
	for what, pid := range inGroup {
		if got, err := podcgroup.CgroupOf(pid); err != nil || got != want {
			t.Errorf("%s (pid %d) is in cgroup %q (%v), want the pod's %q", what, pid, got, err, want)
		}
	}
	if !sandboxCgroupOnly {
		shims := pidsWithCmdline("-id " + podID)
		if len(shims) == 1 {
			if got, _ := podcgroup.CgroupOf(shims[0]); got == want {
				t.Errorf("shim in the pod cgroup without sandbox_cgroup_only")
			}
		}
	}
	// The VM's memory is charged to the pod (cgroup v1 here, v2 elsewhere).
	usage := readInt(t, "/sys/fs/cgroup/memory"+parent+"/memory.usage_in_bytes", "/sys/fs/cgroup"+parent+"/memory.current")
	t.Logf("pod cgroup %s memory: %d MiB", parent, usage>>20)
	if usage < 32<<20 {
		t.Errorf("pod cgroup is charged %d bytes: the VM's memory is not in it", usage)
	}

	// Files written through the unprivileged virtiofsd keep the guest's
	// owners on the host: root's are 0's, another user's that user's.
	assertOwnersThrough(t, ctx, c, id, vol)

	// Guest root writes a set-uid copy of busybox and tries a device node:
	// virtiofsd, root of a user namespace only, cannot make one at all.
	crictl(t, ctx, c, "exec", id, "sh", "-c", "cp /bin/busybox /vol/suid && chmod 4755 /vol/suid && ls -l /vol")
	st, err := os.Stat(filepath.Join(vol, "suid"))
	if err != nil || st.Mode()&os.ModeSetuid == 0 {
		t.Fatalf("the guest's set-uid file did not reach the volume: %v %v", st, err)
	}
	if res, err := c.Crictl(ctx, "exec", id, "mknod", "/vol/null", "c", "1", "3"); err != nil || res.ExitCode == 0 {
		t.Errorf("guest root's mknod in the volume: %v, %+v; want it refused", err, res)
	}
	if _, err := os.Lstat(filepath.Join(vol, "null")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a device node reached the volume: %v", err)
	}
	// The share's copy of a volume lives in virtiofsd's mount namespace
	// only: look through the daemon's root, which is the share.
	var shared []string
	for what, pid := range inGroup {
		if strings.HasPrefix(what, "virtiofsd") {
			shared, _ = filepath.Glob(filepath.Join("/proc", strconv.Itoa(pid), "root", id, "volumes", "*-"+filepath.Base(vol)))
			if len(shared) == 1 {
				break
			}
		}
	}
	if len(shared) != 1 {
		t.Fatalf("the volume in virtiofsd's view of the share: %v", shared)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(filepath.Join(shared[0], "suid"), &fs); err != nil || fs.Flags&unix.ST_NOSUID == 0 {
		t.Errorf("the share's view of the volume is not nosuid: flags %#x, %v", fs.Flags, err)
	}
	if fs.Flags&unix.ST_NODEV == 0 {
		t.Errorf("the share's view of the volume is not nodev: flags %#x", fs.Flags)
	}

	bad := assertUnmappableVolumeRefused(t, ctx, c, podID, podCfg)

	crictl(t, ctx, c, "stopp", podID)
	crictl(t, ctx, c, "rmp", podID)
	ctrtest.AssertNoLeftovers(t, c, podID, id, bad)
	assertUsernsGone(t, podID, userns)
	for _, root := range []string{"/sys/fs/cgroup/memory", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		if _, err := os.Stat(filepath.Join(root, want)); err == nil {
			t.Errorf("pod cgroup %s left in %s", want, root)
		}
	}
}

// pidsWithCmdline lists processes whose command line contains s.
func pidsWithCmdline(s string) []int {
	var out []int
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range dirs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if strings.Contains(strings.ReplaceAll(string(b), "\x00", " "), s) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			if pid != os.Getpid() {
				out = append(out, pid)
			}
		}
	}
	return out
}

// readInt reads the first of paths that exists as an integer.
func readInt(t *testing.T, paths ...string) int64 {
	t.Helper()
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		return n
	}
	t.Fatalf("none of %v", paths)
	return 0
}

// removeCgroupTree removes the test's parent cgroup in every hierarchy.
func removeCgroupTree(parent string) {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*")
	roots = append(roots, "/sys/fs/cgroup")
	for _, r := range roots {
		dirs, _ := filepath.Glob(filepath.Join(r, parent, "*"))
		for _, d := range dirs {
			if fi, err := os.Stat(d); err == nil && fi.IsDir() {
				os.Remove(d)
			}
		}
		os.Remove(filepath.Join(r, parent))
	}
}

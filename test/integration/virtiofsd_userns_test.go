//go:build integration

package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kasa-runtime/kasa/configuration"
	"github.com/kasa-runtime/kasa/test/ctrtest"
	"github.com/kasa-runtime/kasa/virtcontainers"
	"github.com/kasa-runtime/kasa/virtcontainers/fsshare"
	"github.com/kasa-runtime/kasa/virtcontainers/vmmuser"
)

// assertVirtiofsdUnprivileged checks the pod's virtiofsd processes from the
// host: none is uid 0, all are root of one user namespace that is not the
// host's (so they hold no capability on the host) and maps ids 0..65535 to
// the pod's own block of host ids; one is under seccomp. It returns that
// namespace's inode.
func assertVirtiofsdUnprivileged(t *testing.T, podID string, pids []int) uint64 {
	t.Helper()
	first := vmmuser.LookupRange(podID)
	if first == 0 {
		t.Fatalf("no virtiofsd id range recorded for pod %s", podID)
	}
	var hostNS syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/user", &hostNS); err != nil {
		t.Fatal(err)
	}
	var userns uint64
	filtered := false
	for _, pid := range pids {
		fields := procStatus(t, pid)
		for _, key := range []string{"Uid", "Gid"} {
			for _, v := range strings.Fields(fields[key]) {
				if v != strconv.FormatUint(uint64(first), 10) {
					t.Errorf("virtiofsd %d %s = %q, want all %d (root of its user namespace)", pid, key, fields[key], first)
				}
			}
		}
		var ns syscall.Stat_t
		if err := syscall.Stat(fmt.Sprintf("/proc/%d/ns/user", pid), &ns); err != nil {
			t.Fatal(err)
		}
		if ns.Ino == hostNS.Ino {
			t.Errorf("virtiofsd %d is in the host's user namespace", pid)
		}
		if userns != 0 && ns.Ino != userns {
			t.Errorf("virtiofsd %d is in user namespace %d, another in %d", pid, ns.Ino, userns)
		}
		userns = ns.Ino
		for _, m := range []string{"uid_map", "gid_map"} {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, m))
			if got, want := strings.Fields(string(b)), []string{"0", strconv.FormatUint(uint64(first), 10), "65536"}; strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("virtiofsd %d %s = %q, want %q", pid, m, got, want)
			}
		}
		if fields["Seccomp"] == "2" {
			filtered = true
		}
		nofile := ""
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid)); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if strings.HasPrefix(line, "Max open files") {
					nofile = strings.Join(strings.Fields(line)[3:5], "/")
				}
			}
		}
		t.Logf("virtiofsd %d: uid %s, user namespace %d, CapEff %s (in that namespace), Seccomp %s, open files %s (soft/hard)",
			pid, fields["Uid"], ns.Ino, fields["CapEff"], fields["Seccomp"], nofile)
	}
	if !filtered {
		t.Errorf("no virtiofsd process of pod %s is under seccomp", podID)
	}
	return userns
}

// assertOwnersThrough has container ctrID write, as root and as uid 1234,
// into its root filesystem and into volume vol (mounted at /vol), and
// chown a file to 4321; the host sees those owners on disk.
func assertOwnersThrough(t *testing.T, ctx context.Context, c *ctrtest.Containerd, ctrID, vol string) {
	t.Helper()
	crictl(t, ctx, c, "exec", ctrID, "sh", "-c", strings.Join([]string{
		"echo 'u1234:x:1234:1234::/:/bin/sh' >> /etc/passwd",
		"mkdir -m 1777 /kasa-owners /vol/owners",
		"echo r > /kasa-owners/root", "echo r > /vol/owners/root",
		"su u1234 -c 'echo u > /kasa-owners/u1234 && echo u > /vol/owners/u1234'",
		"touch /vol/owners/chowned && chown 4321:4321 /vol/owners/chowned",
		"ls -ln /kasa-owners /vol/owners",
	}, " && "))
	upper, _ := filepath.Glob(filepath.Join(c.Root, "io.containerd.snapshotter.v1.overlayfs", "snapshots", "*", "fs", "kasa-owners"))
	if len(upper) != 1 {
		t.Fatalf("the container's files in its snapshot's upper directory: %v", upper)
	}
	for path, want := range map[string]uint32{
		filepath.Join(upper[0], "root"):         0,
		filepath.Join(upper[0], "u1234"):        1234,
		filepath.Join(vol, "owners", "root"):    0,
		filepath.Join(vol, "owners", "u1234"):   1234,
		filepath.Join(vol, "owners", "chowned"): 4321,
	} {
		var st syscall.Stat_t
		if err := syscall.Stat(path, &st); err != nil {
			t.Errorf("%s: %v", path, err)
			continue
		}
		if st.Uid != want || st.Gid != want {
			t.Errorf("%s is owned by %d:%d on the host, want %d:%d", path, st.Uid, st.Gid, want, want)
		}
	}
}

// assertUnmappableVolumeRefused starts a container of pod podID with a
// hostPath volume on a filesystem no Linux can idmap (an overlayfs mount):
// the unprivileged virtiofsd cannot serve it, so the start fails with an
// error naming the volume's source and the reason, and the share keeps
// nothing of it. It returns the container's id (removed).
func assertUnmappableVolumeRefused(t *testing.T, ctx context.Context, c *ctrtest.Containerd, podID string, podCfg map[string]any) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{"l", "u", "w", "m"} {
		os.Mkdir(filepath.Join(dir, d), 0o755)
	}
	ovl := filepath.Join(dir, "m")
	if err := syscall.Mount("overlay", ovl, "overlay", 0, fmt.Sprintf("lowerdir=%s/l,upperdir=%s/u,workdir=%s/w", dir, dir, dir)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(ovl, syscall.MNT_DETACH) })
	cfg := containerConfig("unmappable", ctrtest.BusyboxImage, []string{"sleep", "3600"}, map[string]any{"container_path": "/ovl", "host_path": ovl})
	podPath, err := c.WriteJSON("unmappable-pod.json", podCfg)
	if err != nil {
		t.Fatal(err)
	}
	ctrPath, err := c.WriteJSON("unmappable-ctr.json", cfg)
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(crictl(t, ctx, c, "create", podID, ctrPath, podPath))
	res, err := c.Crictl(ctx, "start", id)
	if err != nil || res.ExitCode == 0 || !strings.Contains(res.Stderr, "cannot idmap") || !strings.Contains(res.Stderr, ovl) {
		t.Errorf("start with a volume on overlayfs: %v, %+v; want a refusal naming %s", err, res, ovl)
	}
	t.Logf("refused: %s", strings.TrimSpace(res.Stderr))
	crictl(t, ctx, c, "rm", id)
	if _, err := os.Stat(filepath.Join("/run/kasa/shared", podID, id)); err == nil {
		t.Errorf("the refused container's directory is left in the share")
	}
	return id
}

// A sandbox whose VM dies while booting (an initrd that is not one) undoes
// what its unprivileged virtiofsd had: the process, the id range, the door
// to the share, the user namespace.
func TestSandboxBootFailureUndoesVirtiofsdUserns(t *testing.T) {
	cfg := testConfig(t)
	if !cfg.Hypervisor.Rootless || cfg.Hypervisor.VirtioFSUserns == configuration.VirtioFSUsernsOff || cfg.Hypervisor.SharedFS != configuration.SharedFSVirtioFS {
		t.Fatalf("the default configuration does not run virtiofsd without root: %+v", cfg.Hypervisor)
	}
	bad := filepath.Join(t.TempDir(), "garbage.img")
	if err := os.WriteFile(bad, []byte(strings.Repeat("not a cpio archive\n", 4096)), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.Hypervisor.Initrd = bad
	id := newID(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := virtcontainers.CreateSandbox(ctx, virtcontainers.SandboxConfig{ID: id, Config: cfg}); err == nil {
		t.Fatal("a sandbox booted from a garbage initrd")
	}
	assertNothingLeft(t, id)
	if left := ctrtest.WaitNoLeftovers(ctx, 10*time.Second, nil, id); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
	if pids := pidsWithCmdline("source=" + filepath.Join(fsshare.DoorRoot, id)); len(pids) > 0 {
		t.Errorf("virtiofsd processes left: %v", pids)
	}
}

// assertUsernsGone checks that nothing of the pod's virtiofsd is left: no
// process in or holding its user namespace, no id range, no staging mounts.
func assertUsernsGone(t *testing.T, podID string, userns uint64) {
	t.Helper()
	link := fmt.Sprintf("user:[%d]", userns)
	nsLinks, _ := filepath.Glob("/proc/[0-9]*/ns/user")
	fdLinks, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, p := range append(nsLinks, fdLinks...) {
		if l, _ := os.Readlink(p); l == link {
			t.Errorf("%s still refers to the pod's virtiofsd user namespace", p)
		}
	}
	if first := vmmuser.LookupRange(podID); first != 0 {
		t.Errorf("virtiofsd id range %d still held for pod %s", first, podID)
	}
	left, _ := filepath.Glob(filepath.Join(fsshare.StagingRoot, podID[:16]+"-*"))
	if _, err := os.Stat(filepath.Join(fsshare.DoorRoot, podID)); err == nil {
		left = append(left, filepath.Join(fsshare.DoorRoot, podID))
	}
	if len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

// procStatus is /proc/<pid>/status as a map.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("process %d: %v", pid, err)
	}
	fields := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	return fields
}

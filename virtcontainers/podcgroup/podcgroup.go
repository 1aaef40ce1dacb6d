// Package podcgroup places a pod's host-side processes — the hypervisor,
// its helper daemons and, with sandbox_cgroup_only, the shim itself — in the
// pod's sandbox cgroup, so that the node charges the pod for its VM and the
// pod's limits (set by the kubelet on the pod's cgroup, its parent) bound it.
// It works on cgroup v1 (legacy and hybrid hosts) and v2.
package podcgroup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Group is one sandbox's cgroup: the same path in every hierarchy.
type Group struct {
	// Path is the cgroup's path below each hierarchy's root, e.g.
	// /kubepods/burstable/pod<uid>/<sandbox-id>.
	Path string
	// dirs are the group's directories, one per hierarchy.
	dirs []string
}

// MountInfo is the mount table hierarchies are found in; a variable for tests.
var MountInfo = "/proc/self/mountinfo"

// PathFor turns the OCI spec's cgroupsPath into a cgroup path: cgroupfs
// paths are taken as they are (relative ones below the root), systemd's
// "slice:prefix:name" is expanded as systemd lays it out, and an empty one
// becomes /kasa/<sandboxID>.
func PathFor(cgroupsPath, sandboxID string) (string, error) {
	if cgroupsPath == "" {
		return "/kasa/" + sandboxID, nil
	}
	if parts := strings.Split(cgroupsPath, ":"); len(parts) == 3 && !strings.HasPrefix(cgroupsPath, "/") {
		slice, err := expandSlice(parts[0])
		if err != nil {
			return "", fmt.Errorf("cgroupsPath %q: %w", cgroupsPath, err)
		}
		return filepath.Join(slice, parts[1]+"-"+parts[2]+".scope"), nil
	}
	p := filepath.Clean("/" + cgroupsPath)
	if p == "/" {
		return "", fmt.Errorf("cgroupsPath %q names the root cgroup", cgroupsPath)
	}
	return p, nil
}

// expandSlice turns "a-b-c.slice" into "/a.slice/a-b.slice/a-b-c.slice".
func expandSlice(slice string) (string, error) {
	if slice == "" {
		slice = "system.slice"
	}
	name, ok := strings.CutSuffix(slice, ".slice")
	if !ok || name == "" || strings.Contains(name, "/") {
		return "", fmt.Errorf("invalid systemd slice %q", slice)
	}
	if name == "-" {
		return "/", nil
	}
	path, prefix := "", ""
	for _, comp := range strings.Split(name, "-") {
		if comp == "" {
			return "", fmt.Errorf("invalid systemd slice %q", slice)
		}
		path += "/" + prefix + comp + ".slice"
		prefix += comp + "-"
	}
	return path, nil
}

// Create makes (or reuses) the cgroup at path in every mounted hierarchy:
// each cgroup v1 controller's (cpuset initialised from its parent, as the
// kernel leaves it empty) and the unified one.
func Create(path string) (*Group, error) {
	roots, err := hierarchies()
	if err != nil {
		return nil, err
	}
	if len(roots) == 0 {
		return nil, errors.New("pod cgroup: no cgroup hierarchy is mounted")
	}
	g := &Group{Path: path}
	for _, h := range roots {
		dir := filepath.Join(h.root, path)
		if !strings.HasPrefix(dir, h.root+"/") {
			return nil, fmt.Errorf("pod cgroup %s escapes %s", path, h.root)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("pod cgroup %s: %w", path, err)
		}
		if h.cpuset {
			if err := initCpuset(h.root, dir); err != nil {
				return nil, fmt.Errorf("pod cgroup %s: %w", path, err)
			}
		}
		// v1 charges memory where it was first touched; a process moved in
		// a moment after it started brings what it already has along.
		// (Deprecated, but still honoured, by recent kernels; absent on v2,
		// where the driver's early move is what counts.)
		_ = os.WriteFile(filepath.Join(dir, "memory.move_charge_at_immigrate"), []byte("3"), 0)
		g.dirs = append(g.dirs, dir)
	}
	return g, nil
}

// Add moves process pid, and every descendant it already has, into the
// group: a daemon that forked before it was moved (virtiofsd sandboxes
// itself in a child) is moved whole; what it forks later inherits the group.
func (g *Group) Add(pid int) error {
	// The process first, so that what it forks from now on is born inside;
	// then whatever it had forked before, until nothing new turns up.
	if err := MoveTo(g.ProcsFiles(), pid); err != nil {
		return fmt.Errorf("pod cgroup %s: %w", g.Path, err)
	}
	moved := map[int]bool{pid: true}
	for {
		var fresh []int
		for _, p := range descendants(pid) {
			if !moved[p] {
				fresh = append(fresh, p)
			}
		}
		if len(fresh) == 0 {
			return nil
		}
		for _, p := range fresh {
			if err := MoveTo(g.ProcsFiles(), p); err != nil {
				return fmt.Errorf("pod cgroup %s: %w", g.Path, err)
			}
			moved[p] = true
		}
	}
}

// ProcsFiles are the group's cgroup.procs files, one per hierarchy: what a
// launcher writes a new process's pid into (MoveTo) the moment it starts.
func (g *Group) ProcsFiles() []string {
	out := make([]string, len(g.dirs))
	for i, d := range g.dirs {
		out[i] = filepath.Join(d, "cgroup.procs")
	}
	return out
}

// MoveTo writes pid into each of the cgroup.procs files. A process that
// exited meanwhile is not an error.
func MoveTo(procsFiles []string, pid int) error {
	for _, f := range procsFiles {
		if err := os.WriteFile(f, []byte(strconv.Itoa(pid)), 0); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("move pid %d to %s: %w", pid, filepath.Dir(f), err)
		}
	}
	return nil
}

// Delete removes the group's own directories (not its parents) once no
// process is left in them. A group that is already gone is not an error.
func (g *Group) Delete() error {
	if g == nil {
		return nil
	}
	var errs []error
	for _, dir := range g.dirs {
		if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("pod cgroup: %w", err))
		}
	}
	return errors.Join(errs...)
}

// DeleteWithin is Delete, tried again for up to d while the group is busy:
// processes just killed (a VM, virtiofsd and its sandboxed child, which
// dies only once it notices its parent is gone) leave their cgroup a
// moment after they were waited for.
func (g *Group) DeleteWithin(d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		err := g.Delete()
		if err == nil || !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// KillAll SIGKILLs every process in the group but the caller: what a dead
// shim left of its sandbox (QEMU, virtiofsd and the child it sandboxes
// itself in) is all in the pod's group, whatever it did to its command
// line or its parent.
func (g *Group) KillAll() {
	if g == nil {
		return
	}
	self := os.Getpid()
	for _, dir := range g.dirs {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && pid != self && pid > 0 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
}

// Leave moves process pid out of the group, back to where origins (from
// Origins, taken before it joined) says it was, so that the group can be
// deleted while pid lives on (the shim with sandbox_cgroup_only).
func (g *Group) Leave(pid int, origins map[string]string) error {
	if g == nil {
		return nil
	}
	var errs []error
	for _, dir := range g.dirs {
		root := strings.TrimSuffix(dir, g.Path)
		back, ok := origins[root]
		if !ok {
			continue
		}
		err := os.WriteFile(filepath.Join(root, back, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0)
		if err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("pod cgroup: move pid %d back to %s: %w", pid, back, err))
		}
	}
	return errors.Join(errs...)
}

// Origins returns pid's cgroup in each hierarchy, keyed by the hierarchy's
// mount point, for Leave.
func Origins(pid int) (map[string]string, error) {
	roots, err := hierarchies()
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, h := range roots {
			if (parts[1] == "" && h.controllers == "") || (parts[1] != "" && parts[1] == h.controllers) {
				out[h.root] = parts[2]
			}
		}
	}
	return out, nil
}

type hierarchy struct {
	root   string
	cpuset bool
	// controllers as /proc/<pid>/cgroup names them ("cpu,cpuacct"); "" for v2.
	controllers string
}

// hierarchies lists the mounted cgroup hierarchies: every v1 one with a
// controller (named ones such as name=systemd are left alone) and the v2 one.
func hierarchies() ([]hierarchy, error) {
	b, err := os.ReadFile(MountInfo)
	if err != nil {
		return nil, err
	}
	var out []hierarchy
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 {
			continue
		}
		switch g[0] {
		case "cgroup2":
			out = append(out, hierarchy{root: f[4]})
		case "cgroup":
			var controllers []string
			for _, o := range strings.Split(g[2], ",") {
				switch {
				case o == "rw" || o == "ro" || strings.HasPrefix(o, "name=") || strings.HasPrefix(o, "release_agent") ||
					o == "clone_children" || o == "noprefix" || o == "xattr" || o == "cpuset_v2_mode" || o == "favordynmods":
				default:
					controllers = append(controllers, o)
				}
			}
			if len(controllers) > 0 {
				out = append(out, hierarchy{root: f[4], cpuset: slices.Contains(controllers, "cpuset"), controllers: strings.Join(controllers, ",")})
			}
		}
	}
	return out, nil
}

// initCpuset copies cpuset.cpus and cpuset.mems down from root to dir where
// they are empty: a v1 cpuset cgroup without them takes no process.
func initCpuset(root, dir string) error {
	rel, _ := filepath.Rel(root, dir)
	cur := root
	for _, comp := range strings.Split(rel, "/") {
		parent := cur
		cur = filepath.Join(cur, comp)
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			b, err := os.ReadFile(filepath.Join(cur, f))
			if err != nil {
				return err
			}
			if strings.TrimSpace(string(b)) != "" {
				continue
			}
			pb, err := os.ReadFile(filepath.Join(parent, f))
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(cur, f), pb, 0); err != nil {
				return err
			}
		}
	}
	return nil
}

// CgroupOf returns pid's cgroup path in the memory hierarchy (v1) or the
// unified one (v2), as /proc/<pid>/cgroup names it.
func CgroupOf(pid int) (string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return "", err
	}
	var unified string
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == "memory" {
				return parts[2], nil
			}
		}
		if parts[0] == "0" && parts[1] == "" {
			unified = parts[2]
		}
	}
	if unified == "" {
		return "", fmt.Errorf("no memory or unified cgroup for pid %d", pid)
	}
	return unified, nil
}

// descendants lists pid's children, grandchildren and so on.
func descendants(pid int) []int {
	var out []int
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, t := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				out = append(out, c)
				out = append(out, descendants(c)...)
			}
		}
	}
	return out
}

package podcgroup

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

func TestPathFor(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "/kasa/sb"},
		{"/kubepods/burstable/pod1/sb", "/kubepods/burstable/pod1/sb"},
		{"kubepods/pod1/sb", "/kubepods/pod1/sb"},
		{"/a/../../b", "/b"},
		{"kubepods-burstable-pod1.slice:cri-containerd:sb", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-sb.scope"},
		{"system.slice:kasa:sb", "/system.slice/kasa-sb.scope"},
	} {
		got, err := PathFor(tc.in, "sb")
		if err != nil || got != tc.want {
			t.Errorf("PathFor(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"/", "..", "a--b.slice:p:n", "noslice:p:n"} {
		if got, err := PathFor(bad, "sb"); err == nil {
			t.Errorf("PathFor(%q) = %q, want an error", bad, got)
		}
	}
}

func TestHierarchies(t *testing.T) {
	MountInfo = filepath.Join(t.TempDir(), "mountinfo")
	t.Cleanup(func() { MountInfo = "/proc/self/mountinfo" })
	os.WriteFile(MountInfo, []byte(`31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset,clone_children
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
`), 0o644)
	h, err := hierarchies()
	if err != nil {
		t.Fatal(err)
	}
	want := []hierarchy{{"/sys/fs/cgroup/cpu,cpuacct", false, "cpu,cpuacct"}, {"/sys/fs/cgroup/cpuset", true, "cpuset"}, {"/sys/fs/cgroup/unified", false, ""}}
	if len(h) != len(want) {
		t.Fatalf("hierarchies = %v, want %v", h, want)
	}
	for i := range want {
		if h[i] != want[i] {
			t.Errorf("hierarchy %d = %v, want %v", i, h[i], want[i])
		}
	}
}

// A real cgroup on this host: a process and the child it forked move in
// together, and the group goes away once they are gone.
func TestIntegrationCreateAddDelete(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root")
		}
		t.Skip("needs root")
	}
	path := "/kasa-test/" + filepath.Base(t.TempDir())
	g, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", "sleep 60 & wait")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var child int
	for deadline := time.Now().Add(10 * time.Second); child == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if d := descendants(cmd.Process.Pid); len(d) > 0 {
			child = d[0]
		}
	}
	if child == 0 {
		t.Fatal("sh did not fork")
	}
	if err := g.Add(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	for _, pid := range []int{cmd.Process.Pid, child} {
		if got, err := CgroupOf(pid); err != nil || got != path {
			t.Errorf("pid %d is in %q (%v), want %q", pid, got, err, path)
		}
	}
	if err := g.Delete(); err == nil {
		t.Error("deleted a cgroup with processes in it")
	}
	// The test itself joins and leaves, as a shim with sandbox_cgroup_only.
	self := os.Getpid()
	origins, err := Origins(self)
	if err != nil {
		t.Fatal(err)
	}
	was, _ := CgroupOf(self)
	if err := g.Add(self); err != nil {
		t.Fatal(err)
	}
	if got, _ := CgroupOf(self); got != path {
		t.Errorf("self in %q after Add, want %q", got, path)
	}
	if err := g.Leave(self, origins); err != nil {
		t.Fatal(err)
	}
	if got, _ := CgroupOf(self); got != was {
		t.Errorf("self in %q after Leave, want %q", got, was)
	}
	cmd.Process.Kill()
	cmd.Wait()
	exec.Command("kill", "-9", itoa(child)).Run()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := g.Delete()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, d := range g.dirs {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("%s still there", d)
		}
		os.Remove(filepath.Dir(d)) // the test's parent
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

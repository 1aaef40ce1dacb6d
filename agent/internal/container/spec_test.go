package container

import (
	"strings"
	"testing"

	"github.com/containerd/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func baseSpec() *specs.Spec {
	return &specs.Spec{
		Root:    &specs.Root{Path: "/run/kasa/shared/c1/rootfs"},
		Process: &specs.Process{Args: []string{"sh"}, Cwd: "/"},
		Linux:   &specs.Linux{},
	}
}

func nsTypes(ns []specs.LinuxNamespace) map[specs.LinuxNamespaceType]string {
	out := map[specs.LinuxNamespaceType]string{}
	for _, n := range ns {
		out[n.Type] = n.Path
	}
	return out
}

func TestAdaptSpecRejects(t *testing.T) {
	for name, mutate := range map[string]func(*specs.Spec){
		"no root":          func(s *specs.Spec) { s.Root = nil },
		"relative root":    func(s *specs.Spec) { s.Root.Path = "rootfs" },
		"no process":       func(s *specs.Spec) { s.Process = nil },
		"no args":          func(s *specs.Spec) { s.Process.Args = nil },
		"empty program":    func(s *specs.Spec) { s.Process.Args = []string{""} },
		"relative cwd":     func(s *specs.Spec) { s.Process.Cwd = "tmp" },
		"everything unset": func(s *specs.Spec) { *s = specs.Spec{} },
	} {
		t.Run(name, func(t *testing.T) {
			s := baseSpec()
			mutate(s)
			_, err := adaptSpec(s, adaptOptions{cgroupsPath: "/kasa/c1"})
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("err = %v, want InvalidArgument", err)
			}
		})
	}
}

func TestAdaptSpecNamespaces(t *testing.T) {
	for _, tc := range []struct {
		name  string
		in    []specs.LinuxNamespace
		joins map[specs.LinuxNamespaceType]string
		want  map[specs.LinuxNamespaceType]string
	}{
		{
			name: "none asked: the four new ones, no network",
			want: map[specs.LinuxNamespaceType]string{"pid": "", "mount": "", "ipc": "", "uts": ""},
		},
		{
			name: "host paths and the network namespace dropped",
			in: []specs.LinuxNamespace{
				{Type: "network", Path: "/var/run/netns/cni-1"}, {Type: "ipc", Path: "/proc/42/ns/ipc"},
				{Type: "uts", Path: "/proc/42/ns/uts"}, {Type: "pid"}, {Type: "mount"}, {Type: "cgroup"},
			},
			want: map[specs.LinuxNamespaceType]string{"pid": "", "mount": "", "ipc": "", "uts": "", "cgroup": ""},
		},
		{
			name:  "sandbox PID namespace joined",
			in:    []specs.LinuxNamespace{{Type: "pid", Path: "/proc/42/ns/pid"}, {Type: "pid"}},
			joins: map[specs.LinuxNamespaceType]string{"pid": "/proc/7/ns/pid"},
			want:  map[specs.LinuxNamespaceType]string{"pid": "/proc/7/ns/pid", "mount": "", "ipc": "", "uts": ""},
		},
		{
			name:  "sandbox IPC and UTS joined, a new mount namespace kept",
			in:    []specs.LinuxNamespace{{Type: "ipc"}, {Type: "uts"}, {Type: "mount"}},
			joins: map[specs.LinuxNamespaceType]string{"ipc": "/proc/7/ns/ipc", "uts": "/proc/7/ns/uts"},
			want:  map[specs.LinuxNamespaceType]string{"pid": "", "mount": "", "ipc": "/proc/7/ns/ipc", "uts": "/proc/7/ns/uts"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := baseSpec()
			s.Linux.Namespaces = tc.in
			if _, err := adaptSpec(s, adaptOptions{cgroupsPath: "/kasa/c1", joins: tc.joins}); err != nil {
				t.Fatal(err)
			}
			got := nsTypes(s.Linux.Namespaces)
			if len(got) != len(s.Linux.Namespaces) || len(got) != len(tc.want) {
				t.Fatalf("namespaces %v, want %v", s.Linux.Namespaces, tc.want)
			}
			for typ, path := range tc.want {
				if p, ok := got[typ]; !ok || p != path {
					t.Errorf("namespace %s: got %q (present %v), want %q", typ, p, ok, path)
				}
			}
		})
	}
}

func TestAdaptSpecHostOnlyParts(t *testing.T) {
	s := baseSpec()
	limit, swappiness := int64(1<<20), uint64(60)
	s.Hooks = &specs.Hooks{Prestart: []specs.Hook{{Path: "/usr/bin/nvidia-hook"}}, Poststop: []specs.Hook{{Path: "/bin/x"}}}
	s.Linux.CgroupsPath = "/kubepods/pod1/c1"
	s.Linux.Devices = []specs.LinuxDevice{
		{Path: "/dev/fuse", Type: "c", Major: 10, Minor: 229},
		{Path: "/dev/nvidia0", Type: "c", Major: 195, Minor: 0},
	}
	s.Linux.Resources = &specs.LinuxResources{
		Memory:         &specs.LinuxMemory{Limit: &limit, Swappiness: &swappiness},
		HugepageLimits: []specs.LinuxHugepageLimit{{Pagesize: "2MB", Limit: 1 << 21}},
		BlockIO:        &specs.LinuxBlockIO{ThrottleReadBpsDevice: []specs.LinuxThrottleDevice{{Rate: 1}}},
		Network:        &specs.LinuxNetwork{},
		Devices:        []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
	}
	s.Linux.Sysctl = map[string]string{"net.ipv4.ip_unprivileged_port_start": "0", "kernel.shm_rmid_forced": "1", "net/core/somaxconn": "1024"}
	s.Linux.MountLabel = "system_u:object_r:container_file_t:s0"
	s.Process.ApparmorProfile = "cri-containerd.apparmor.d"
	s.Process.Capabilities = &specs.LinuxCapabilities{Bounding: []string{"CAP_KILL"}}
	s.Process.Rlimits = []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}}
	s.Mounts = []specs.Mount{{Destination: "/data", Source: "/run/kasa/shared/vol", Type: "bind", Options: []string{"rbind"}}}

	guestDevs := func(path string) (specs.LinuxDevice, bool) {
		if path == "/dev/fuse" {
			return specs.LinuxDevice{Path: path, Type: "c", Major: 10, Minor: 42}, true
		}
		return specs.LinuxDevice{}, false
	}
	ad, err := adaptSpec(s, adaptOptions{cgroupsPath: "/kasa/c1", guestDevice: guestDevs})
	if err != nil {
		t.Fatal(err)
	}
	if s.Hooks != nil {
		t.Errorf("hooks kept: %+v", s.Hooks)
	}
	if s.Linux.CgroupsPath != "/kasa/c1" {
		t.Errorf("cgroups path %q", s.Linux.CgroupsPath)
	}
	if len(s.Linux.Devices) != 1 || s.Linux.Devices[0].Path != "/dev/fuse" || s.Linux.Devices[0].Minor != 42 {
		t.Errorf("devices %+v, want /dev/fuse with the guest's numbers", s.Linux.Devices)
	}
	r := s.Linux.Resources
	if r.HugepageLimits != nil || r.BlockIO.ThrottleReadBpsDevice != nil || r.Network != nil || r.Memory.Swappiness != nil {
		t.Errorf("host-only resources kept: %+v", r)
	}
	if *r.Memory.Limit != limit || len(r.Devices) != 1 {
		t.Errorf("resources the container needs were lost: %+v", r)
	}
	if len(s.Linux.Sysctl) != 1 || s.Linux.Sysctl["kernel.shm_rmid_forced"] != "1" {
		t.Errorf("container sysctls %v, want only the IPC one", s.Linux.Sysctl)
	}
	if len(ad.netSysctls) != 2 || ad.netSysctls["net/core/somaxconn"] != "1024" {
		t.Errorf("net sysctls for the guest %v", ad.netSysctls)
	}
	if s.Linux.MountLabel != "" || s.Process.ApparmorProfile != "" {
		t.Error("LSM labels kept")
	}
	if s.Process.Capabilities == nil || len(s.Process.Rlimits) != 1 || len(s.Mounts) != 1 {
		t.Error("process settings or mounts were lost")
	}
	notes := strings.Join(ad.notes, "\n")
	for _, want := range []string{"2 OCI hook", "/dev/nvidia0", "/kubepods/pod1/c1", "hugepage"} {
		if !strings.Contains(notes, want) {
			t.Errorf("notes %q do not mention %q", notes, want)
		}
	}
}

func TestLibcontainerProcess(t *testing.T) {
	p := &specs.Process{
		Args: []string{"sh"}, Env: []string{"A=1"},
		User:            specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{5, 6}},
		NoNewPrivileges: true,
		ConsoleSize:     &specs.Box{Height: 40, Width: 100},
		Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 10, Soft: 5}},
		Capabilities:    &specs.LinuxCapabilities{Effective: []string{"CAP_KILL"}},
	}
	lp, err := libcontainerProcess(p)
	if err != nil {
		t.Fatal(err)
	}
	if lp.UID != 1000 || lp.GID != 1000 || len(lp.AdditionalGroups) != 2 || lp.Cwd != "/" ||
		lp.ConsoleHeight != 40 || lp.ConsoleWidth != 100 || !*lp.NoNewPrivileges ||
		len(lp.Rlimits) != 1 || lp.Rlimits[0].Soft != 5 || lp.Capabilities.Effective[0] != "CAP_KILL" {
		t.Errorf("converted process %+v", lp)
	}
	p.Rlimits = []specs.POSIXRlimit{{Type: "RLIMIT_BOGUS"}}
	if _, err := libcontainerProcess(p); !errdefs.IsInvalidArgument(err) {
		t.Errorf("unknown rlimit: %v, want InvalidArgument", err)
	}
}

package virtcontainers

import (
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/kasa-runtime/kasa/virtcontainers/fsshare"
)

func hostSpec() *specs.Spec {
	return &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{Args: []string{"sh"}, Cwd: "/"},
		Root:    &specs.Root{Path: "/var/lib/containerd/bundle/rootfs", Readonly: true},
		Hooks:   &specs.Hooks{Prestart: []specs.Hook{{Path: "/usr/bin/nvidia-hook"}}},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/data", Type: "bind", Source: "/srv/data", Options: []string{"rbind", "ro"}},
			{Destination: "/etc/hosts", Source: "/var/lib/hosts", Options: []string{"bind"}},
		},
		Linux: &specs.Linux{
			CgroupsPath: "/default/c1",
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.MountNamespace},
				{Type: specs.NetworkNamespace, Path: "/var/run/netns/cni-1234"},
			},
			Devices: []specs.LinuxDevice{{Path: "/dev/fuse", Type: "c", Major: 10, Minor: 229}},
		},
	}
}

func TestGuestSpec(t *testing.T) {
	in := hostSpec()
	if got := sharedVolumes(in); len(got) != 2 || got[0] != 1 || got[1] != 2 {
		t.Fatalf("shared volumes = %v, want [1 2]", got)
	}
	out, sandboxNS, err := guestSpec(in, "/run/kasa/shared/c1/rootfs", map[int]fsshare.Bound{1: {GuestPath: "/run/kasa/shared/c1/volumes/1-data"}, 2: {GuestPath: "/run/kasa/shared/c1/volumes/2-hosts"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(sandboxNS) != 0 {
		t.Errorf("sandbox namespaces %v for a spec without namespace paths", sandboxNS)
	}
	if out.Root.Path != "/run/kasa/shared/c1/rootfs" || !out.Root.Readonly {
		t.Errorf("root = %+v", out.Root)
	}
	if out.Hooks != nil {
		t.Error("host hooks kept")
	}
	if out.Mounts[1].Source != "/run/kasa/shared/c1/volumes/1-data" || !slices.Equal(out.Mounts[1].Options, []string{"rbind", "ro"}) {
		// The guest binds with the spec's own options, as runc would.
		t.Errorf("volume = %+v", out.Mounts[1])
	}
	if out.Mounts[0].Source != "proc" {
		t.Errorf("proc mount changed: %+v", out.Mounts[0])
	}
	for _, n := range out.Linux.Namespaces {
		if n.Type == specs.NetworkNamespace {
			t.Error("network namespace kept")
		}
	}
	if len(out.Linux.Namespaces) != 2 || out.Linux.CgroupsPath != "" || out.Linux.Devices != nil {
		t.Errorf("linux = %+v", out.Linux)
	}
	// The host's spec is untouched.
	if in.Root.Path != "/var/lib/containerd/bundle/rootfs" || in.Hooks == nil || in.Mounts[1].Source != "/srv/data" || len(in.Linux.Namespaces) != 3 {
		t.Error("input spec modified")
	}
}

func TestGuestSpecErrors(t *testing.T) {
	for name, tc := range map[string]struct {
		mutate func(*specs.Spec)
		vols   map[int]fsshare.Bound
		want   string
	}{
		"unshared bind": {func(*specs.Spec) {}, map[int]fsshare.Bound{1: {GuestPath: "/x"}}, `"/var/lib/hosts"`},
		"host user ns": {func(s *specs.Spec) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace, Path: "/proc/1/ns/user"})
		}, map[int]fsshare.Bound{1: {GuestPath: "/x"}, 2: {GuestPath: "/y"}}, "user namespace"},
		"no process":     {func(s *specs.Spec) { s.Process = nil }, nil, "no process"},
		"no linux block": {func(s *specs.Spec) { s.Linux = nil }, nil, "no linux"},
	} {
		s := hostSpec()
		tc.mutate(s)
		if _, _, err := guestSpec(s, "/r", tc.vols); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", name, err, tc.want)
		}
	}
}

// A CRI workload container names its pod's namespaces by host path; they
// become sandbox namespaces, and its /dev/shm is the pod's guest shm.
func TestGuestSpecPodContainer(t *testing.T) {
	in := hostSpec()
	in.Linux.Namespaces = append(in.Linux.Namespaces,
		specs.LinuxNamespace{Type: specs.IPCNamespace, Path: "/proc/4242/ns/ipc"},
		specs.LinuxNamespace{Type: specs.UTSNamespace, Path: "/proc/4242/ns/uts"})
	in.Linux.Namespaces[0].Path = "/proc/4242/ns/pid"
	in.Mounts = append(in.Mounts, specs.Mount{Destination: "/dev/shm", Type: "bind",
		Source: "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/s1/shm", Options: []string{"rbind", "ro"}})
	if got := sharedVolumes(in); len(got) != 2 {
		t.Fatalf("shared volumes = %v: /dev/shm must not be shared", got)
	}
	out, sandboxNS, err := guestSpec(in, "/r", map[int]fsshare.Bound{1: {GuestPath: "/x"}, 2: {GuestPath: "/y"}})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(sandboxNS, ",") != "pid,ipc,uts" {
		t.Errorf("sandbox namespaces = %v, want pid, ipc, uts", sandboxNS)
	}
	for _, n := range out.Linux.Namespaces {
		if n.Path != "" {
			t.Errorf("host namespace path kept: %+v", n)
		}
	}
	if shm := out.Mounts[3]; shm.Source != "/run/kasa/sandbox/shm" {
		t.Errorf("/dev/shm = %+v, want the pod's guest shm", shm)
	}
}

func TestPodSandboxSpec(t *testing.T) {
	in := hostSpec()
	out, err := podSandboxSpec(in)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Mounts) != 1 || out.Mounts[0].Destination != "/proc" {
		t.Errorf("mounts = %+v, want only the kernel file systems", out.Mounts)
	}
	in.Linux.Namespaces[0].Path = "/proc/1/ns/pid"
	if _, err := podSandboxSpec(in); err == nil || !strings.Contains(err.Error(), "cannot join") {
		t.Errorf("a sandbox container joining namespaces: err = %v", err)
	}
	if _, err := podSandboxSpec(nil); err == nil {
		t.Error("nil spec accepted")
	}
}

// CRI-O names the pod's namespaces by the files pinns bind-mounted them on;
// for a workload container they are the sandbox container's, as
// containerd's /proc paths are.
func TestGuestSpecPinnedNamespaces(t *testing.T) {
	for _, tc := range []struct {
		name string
		ns   []specs.LinuxNamespace
		want string
	}{
		{"CRI-O pinned ipc, uts; own pid", []specs.LinuxNamespace{
			{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace, Path: "/var/run/ipcns/9f2c"},
			{Type: specs.UTSNamespace, Path: "/var/run/utsns/9f2c"}, {Type: specs.NetworkNamespace, Path: "/var/run/netns/9f2c"},
		}, "ipc,uts"},
		{"CRI-O shared pid (the infra's /proc path)", []specs.LinuxNamespace{
			{Type: specs.PIDNamespace, Path: "/proc/777/ns/pid"}, {Type: specs.IPCNamespace, Path: "/var/run/crio/ns/ipcns/9f2c"},
		}, "pid,ipc"},
		{"containerd", []specs.LinuxNamespace{
			{Type: specs.IPCNamespace, Path: "/proc/42/ns/ipc"}, {Type: specs.UTSNamespace, Path: "/proc/42/ns/uts"},
		}, "ipc,uts"},
	} {
		in := hostSpec()
		in.Mounts = in.Mounts[:1]
		in.Linux.Namespaces = tc.ns
		out, sandboxNS, err := guestSpec(in, "/r", nil)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := strings.Join(sandboxNS, ","); got != tc.want {
			t.Errorf("%s: sandbox namespaces = %s, want %s", tc.name, got, tc.want)
		}
		for _, n := range out.Linux.Namespaces {
			if n.Path != "" || n.Type == specs.NetworkNamespace {
				t.Errorf("%s: kept %+v", tc.name, n)
			}
		}
	}
}

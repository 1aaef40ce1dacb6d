package virtcontainers

import (
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
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
	out, err := guestSpec(in, "/run/kasa/shared/c1/rootfs", map[int]string{1: "/run/kasa/shared/c1/volumes/1-data", 2: "/run/kasa/shared/c1/volumes/2-hosts"})
	if err != nil {
		t.Fatal(err)
	}
	if out.Root.Path != "/run/kasa/shared/c1/rootfs" || !out.Root.Readonly {
		t.Errorf("root = %+v", out.Root)
	}
	if out.Hooks != nil {
		t.Error("host hooks kept")
	}
	if out.Mounts[1].Source != "/run/kasa/shared/c1/volumes/1-data" || !isReadOnly(out.Mounts[1]) {
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
		vols   map[int]string
		want   string
	}{
		"unshared bind":  {func(*specs.Spec) {}, map[int]string{1: "/x"}, `"/var/lib/hosts"`},
		"host pid ns":    {func(s *specs.Spec) { s.Linux.Namespaces[0].Path = "/proc/1/ns/pid" }, map[int]string{1: "/x", 2: "/y"}, "pid namespace"},
		"no process":     {func(s *specs.Spec) { s.Process = nil }, nil, "no process"},
		"no linux block": {func(s *specs.Spec) { s.Linux = nil }, nil, "no linux"},
	} {
		s := hostSpec()
		tc.mutate(s)
		if _, err := guestSpec(s, "/r", tc.vols); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", name, err, tc.want)
		}
	}
}

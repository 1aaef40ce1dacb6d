package shimv2

import (
	"os"
	"path/filepath"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// What containerd and CRI-O write for the same pod, and what the sandbox
// gets from it.
func TestFromManager(t *testing.T) {
	const bundleDir = "/run/mgr/bundle/c1"
	crioNS := func() []specs.LinuxNamespace {
		return []specs.LinuxNamespace{
			{Type: specs.PIDNamespace},
			{Type: specs.NetworkNamespace, Path: "/var/run/netns/9f2c"},
			{Type: specs.IPCNamespace, Path: "/var/run/ipcns/9f2c"},
			{Type: specs.UTSNamespace, Path: "/var/run/utsns/9f2c"},
			{Type: specs.MountNamespace},
		}
	}
	for _, tc := range []struct {
		name       string
		root       *specs.Root
		ann        map[string]string
		ns         []specs.LinuxNamespace
		wantRootfs string
		wantNS     map[specs.LinuxNamespaceType]string // type -> path after translation
	}{
		{
			name: "containerd sandbox: relative root, namespaces to create",
			root: &specs.Root{Path: "rootfs"}, ann: map[string]string{annCRIContainerType: "sandbox", annCRISandboxID: "c1"},
			ns:         []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace}, {Type: specs.NetworkNamespace, Path: "/var/run/netns/cni-1"}},
			wantRootfs: bundleDir + "/rootfs",
			wantNS:     map[specs.LinuxNamespaceType]string{specs.PIDNamespace: "", specs.IPCNamespace: "", specs.UTSNamespace: "", specs.NetworkNamespace: "/var/run/netns/cni-1"},
		},
		{
			name: "containerd workload: the sandbox's /proc paths stay",
			root: &specs.Root{Path: "rootfs"}, ann: map[string]string{annCRIContainerType: "container", annCRISandboxID: "pod"},
			ns:         []specs.LinuxNamespace{{Type: specs.IPCNamespace, Path: "/proc/42/ns/ipc"}, {Type: specs.UTSNamespace, Path: "/proc/42/ns/uts"}},
			wantRootfs: bundleDir + "/rootfs",
			wantNS:     map[specs.LinuxNamespaceType]string{specs.IPCNamespace: "/proc/42/ns/ipc", specs.UTSNamespace: "/proc/42/ns/uts"},
		},
		{
			name: "CRI-O sandbox: absolute root, pinned ipc/uts dropped, netns kept",
			root: &specs.Root{Path: "/var/lib/containers/storage/overlay/ab12/merged", Readonly: true},
			ann:  map[string]string{annCRIOContainerTyp: "sandbox", annCRIOSandboxID: "c1"},
			ns:   crioNS(), wantRootfs: "/var/lib/containers/storage/overlay/ab12/merged",
			wantNS: map[specs.LinuxNamespaceType]string{specs.PIDNamespace: "", specs.NetworkNamespace: "/var/run/netns/9f2c",
				specs.IPCNamespace: "", specs.UTSNamespace: "", specs.MountNamespace: ""},
		},
		{
			name: "CRI-O workload: pinned paths name the pod's namespaces, kept",
			root: &specs.Root{Path: "/var/lib/containers/storage/overlay/cd34/merged/"},
			ann:  map[string]string{annCRIOContainerTyp: "container", annCRIOSandboxID: "pod"},
			ns:   crioNS(), wantRootfs: "/var/lib/containers/storage/overlay/cd34/merged",
			wantNS: map[specs.LinuxNamespaceType]string{specs.PIDNamespace: "", specs.NetworkNamespace: "/var/run/netns/9f2c",
				specs.IPCNamespace: "/var/run/ipcns/9f2c", specs.UTSNamespace: "/var/run/utsns/9f2c", specs.MountNamespace: ""},
		},
		{
			name: "ctr container without root: the bundle's rootfs",
			ns:   []specs.LinuxNamespace{{Type: specs.IPCNamespace, Path: "/proc/1/ns/ipc"}}, wantRootfs: bundleDir + "/rootfs",
			// Not a pod sandbox: a path is kept (and refused further down).
			wantNS: map[specs.LinuxNamespaceType]string{specs.IPCNamespace: "/proc/1/ns/ipc"},
		},
	} {
		s := &specs.Spec{Root: tc.root, Annotations: tc.ann, Linux: &specs.Linux{Namespaces: tc.ns}}
		b := fromManager(bundleDir, s)
		if b.rootfs != tc.wantRootfs {
			t.Errorf("%s: rootfs = %q, want %q", tc.name, b.rootfs, tc.wantRootfs)
		}
		if len(b.spec.Linux.Namespaces) != len(tc.wantNS) {
			t.Errorf("%s: namespaces = %+v", tc.name, b.spec.Linux.Namespaces)
		}
		for _, n := range b.spec.Linux.Namespaces {
			if want, ok := tc.wantNS[n.Type]; !ok || n.Path != want {
				t.Errorf("%s: %s namespace path = %q, want %q", tc.name, n.Type, n.Path, want)
			}
		}
		if tc.root != nil && b.spec.Root.Path != tc.root.Path {
			t.Errorf("%s: root.path rewritten to %q", tc.name, b.spec.Root.Path)
		}
	}
}

func TestReadBundle(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"root":{"path":"/abs/merged"},"annotations":{"io.kubernetes.cri-o.ContainerType":"sandbox"},"linux":{"namespaces":[{"type":"ipc","path":"/var/run/ipcns/x"}]}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := readBundle(dir)
	if err != nil {
		t.Fatal(err)
	}
	if b.rootfs != "/abs/merged" || b.spec.Linux.Namespaces[0].Path != "" {
		t.Errorf("bundle = rootfs %q, namespaces %+v", b.rootfs, b.spec.Linux.Namespaces)
	}
	if _, err := readBundle(t.TempDir()); err == nil {
		t.Error("a bundle without config.json read")
	}
}

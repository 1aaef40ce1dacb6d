package shimv2

import (
	"strings"
	"testing"

	"github.com/containerd/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/kasa-runtime/kasa/configuration"
)

func TestHostNamespaces(t *testing.T) {
	ns := func(types ...specs.LinuxNamespaceType) *specs.Spec {
		s := &specs.Spec{Linux: &specs.Linux{}}
		for _, ty := range types {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: ty})
		}
		return s
	}
	crio := ns(specs.PIDNamespace, specs.MountNamespace)
	crio.Linux.Namespaces = append(crio.Linux.Namespaces,
		specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: "/var/run/netns/x"},
		specs.LinuxNamespace{Type: specs.IPCNamespace, Path: "/var/run/ipcns/x"})
	for _, tc := range []struct {
		name string
		spec *specs.Spec
		want string
	}{
		{"pod namespaces", ns(specs.NetworkNamespace, specs.IPCNamespace, specs.PIDNamespace, specs.UTSNamespace), ""},
		{"CRI-O's pinned namespaces are the pod's", crio, ""},
		{"hostNetwork", ns(specs.IPCNamespace, specs.PIDNamespace), "hostNetwork"},
		{"hostIPC and hostPID", ns(specs.NetworkNamespace), "hostIPC, hostPID"},
		{"no linux section", &specs.Spec{}, "hostNetwork, hostIPC, hostPID"},
	} {
		got := strings.Join(hostNamespaces(tc.spec), ", ")
		if got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
		cfg := configuration.Default()
		err := checkHostNamespaces("sb", tc.spec, cfg)
		if tc.want == "" {
			if err != nil {
				t.Errorf("%s: refused: %v", tc.name, err)
			}
			continue
		}
		if err == nil || !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "allow_host_namespaces") {
			t.Errorf("%s: err = %v, want InvalidArgument naming %s and the opt-in", tc.name, err, tc.want)
		}
		cfg.Runtime.AllowHostNamespaces = true
		if err := checkHostNamespaces("sb", tc.spec, cfg); err != nil {
			t.Errorf("%s with allow_host_namespaces: %v", tc.name, err)
		}
	}
}

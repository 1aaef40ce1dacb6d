package shimv2

import (
	"fmt"
	"strings"

	"github.com/containerd/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/kasa-runtime/kasa/configuration"
)

// hostNamespaceFields names, for each namespace a pod can share with the
// node, the Kubernetes field that asks for it.
var hostNamespaceFields = []struct {
	ns    specs.LinuxNamespaceType
	field string
}{
	{specs.NetworkNamespace, "hostNetwork"},
	{specs.IPCNamespace, "hostIPC"},
	{specs.PIDNamespace, "hostPID"},
}

// hostNamespaces lists the Kubernetes fields of the node namespaces a
// sandbox's spec asks to share: a namespace the spec does not list at all is
// the node's (containerd and CRI-O leave it out for hostNetwork, hostIPC and
// hostPID; one with a path, as CRI-O's pinned ones, is the pod's own).
func hostNamespaces(s *specs.Spec) []string {
	var out []string
	for _, h := range hostNamespaceFields {
		found := false
		if s.Linux != nil {
			for _, n := range s.Linux.Namespaces {
				if n.Type == h.ns {
					found = true
					break
				}
			}
		}
		if !found {
			out = append(out, h.field)
		}
	}
	return out
}

// checkHostNamespaces refuses a sandbox that asks for the node's network,
// IPC or PID namespace: its VM cannot share them, and giving it the VM's
// own instead would silently differ from what the pod asked for. An
// operator may opt in to that ([runtime] allow_host_namespaces).
func checkHostNamespaces(id string, s *specs.Spec, cfg *configuration.Config) error {
	host := hostNamespaces(s)
	if len(host) == 0 || cfg.Runtime.AllowHostNamespaces {
		return nil
	}
	return fmt.Errorf("sandbox %s asks for the node's namespaces (%s): a Kasa pod runs in its own VM and cannot share them; "+
		"run it with another RuntimeClass, or set [runtime] allow_host_namespaces = true to give it the VM's own instead: %w",
		id, strings.Join(host, ", "), errdefs.ErrInvalidArgument)
}

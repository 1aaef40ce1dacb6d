package virtcontainers

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/containerd/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/virtcontainers/fsshare"
)

// isBind reports whether an OCI mount is a bind mount of a host path.
func isBind(m specs.Mount) bool {
	if m.Type == "bind" {
		return true
	}
	return slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind")
}

// guestSpec adapts a container's OCI spec, written for the host, to the
// guest: the root is the rootfs in the shared directory, bind mounts point at
// their copies in the shared directory (volumes maps a mount's index to
// them; see guestSubmounts for the mounts below them), and the host-only parts are dropped: hooks (they would run in
// the guest with the host's paths), device nodes (they are the host's), the
// cgroup path (the agent places containers in the guest's hierarchy), the
// network namespace (containers share the VM's network), and the VM and
// Windows sections (host paths of a VM runtime's hypervisor, kernel and
// image, and of Windows layers). The input is not modified.
//
// Namespace paths name the pod sandbox's namespaces (CRI gives
// /proc/<sandbox task pid>/ns/<type>): the IPC, UTS and PID ones become
// joinable types, returned in sandboxNS, for the agent to resolve to the
// sandbox container's namespaces in the guest. A /dev/shm bind mount becomes
// the pod's guest shm (api.GuestPodShm).
func guestSpec(in *specs.Spec, rootfs string, volumes map[int]fsshare.Bound) (_ *specs.Spec, sandboxNS []string, _ error) {
	if in == nil || in.Process == nil {
		return nil, nil, fmt.Errorf("OCI spec has no process")
	}
	if in.Linux == nil {
		return nil, nil, fmt.Errorf("OCI spec has no linux section")
	}
	b, err := json.Marshal(in)
	if err != nil {
		return nil, nil, err
	}
	var s specs.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, nil, err
	}
	if s.Root == nil {
		s.Root = &specs.Root{}
	}
	s.Root.Path = rootfs
	s.Hooks = nil
	s.VM = nil
	s.Windows = nil

	mounts := make([]specs.Mount, 0, len(s.Mounts))
	for i, m := range s.Mounts {
		if !isBind(m) {
			mounts = append(mounts, m)
			continue
		}
		if isPodShm(m) {
			m.Source = api.GuestPodShm
			mounts = append(mounts, m)
			continue
		}
		b, ok := volumes[i]
		if !ok {
			return nil, nil, fmt.Errorf("bind mount of host path %q at %q was not shared with the guest", m.Source, m.Destination)
		}
		m.Source = b.GuestPath
		mounts = append(mounts, m)
		mounts = append(mounts, guestSubmounts(m, b.Submounts)...)
	}
	s.Mounts = mounts

	var ns []specs.LinuxNamespace
	for _, n := range s.Linux.Namespaces {
		switch {
		case n.Type == specs.NetworkNamespace:
			// The VM is the pod's network boundary.
		case n.Path != "" && joinableNS[n.Type] != "":
			sandboxNS = append(sandboxNS, joinableNS[n.Type])
			ns = append(ns, specs.LinuxNamespace{Type: n.Type})
		case n.Path != "":
			return nil, nil, fmt.Errorf("joining the host's %s namespace %q is not possible inside a VM (only the pod's ipc, uts and pid namespaces can be shared)", n.Type, n.Path)
		default:
			ns = append(ns, n)
		}
	}
	s.Linux.Namespaces = ns
	s.Linux.CgroupsPath = ""
	s.Linux.Devices = nil
	return &s, sandboxNS, nil
}

// joinableNS are the namespaces a container may share with its pod's
// sandbox container, by their agent API names.
var joinableNS = map[specs.LinuxNamespaceType]string{
	specs.IPCNamespace: "ipc", specs.UTSNamespace: "uts", specs.PIDNamespace: "pid",
}

// isPodShm reports whether m is the pod's /dev/shm, which the guest
// provides instead of sharing the host's.
func isPodShm(m specs.Mount) bool { return filepath.Clean(m.Destination) == "/dev/shm" }

// sharedVolumes lists the bind mounts of a spec that must be shared with the
// guest, by index.
func sharedVolumes(s *specs.Spec) []int {
	var out []int
	for i, m := range s.Mounts {
		if isBind(m) && filepath.IsAbs(m.Source) && !isPodShm(m) {
			out = append(out, i)
		}
	}
	return out
}

// podSandboxSpec is the guest spec of a pod's sandbox container: the agent
// replaces its root and process with its own pause, and its bind mounts
// stay on the host. Its namespaces must be new ones: the pod's namespaces
// are the ones it creates.
func podSandboxSpec(in *specs.Spec) (*specs.Spec, error) {
	if in == nil {
		return nil, fmt.Errorf("sandbox container: no OCI spec: %w", errdefs.ErrInvalidArgument)
	}
	var mounts []specs.Mount
	for _, m := range in.Mounts {
		if !isBind(m) {
			mounts = append(mounts, m)
		}
	}
	trimmed := *in
	trimmed.Mounts = mounts
	gs, sandboxNS, err := guestSpec(&trimmed, "/", nil)
	if err != nil {
		return nil, fmt.Errorf("sandbox container: %w: %v", errdefs.ErrInvalidArgument, err)
	}
	if len(sandboxNS) > 0 {
		return nil, fmt.Errorf("sandbox container: it is the pod's, it cannot join the pod's %v namespaces: %w", sandboxNS, errdefs.ErrInvalidArgument)
	}
	return gs, nil
}

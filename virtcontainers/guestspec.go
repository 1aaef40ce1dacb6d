package virtcontainers

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// isBind reports whether an OCI mount is a bind mount of a host path.
func isBind(m specs.Mount) bool {
	if m.Type == "bind" {
		return true
	}
	return slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind")
}

// isReadOnly reports whether an OCI mount asks for read-only.
func isReadOnly(m specs.Mount) bool { return slices.Contains(m.Options, "ro") }

// guestSpec adapts a container's OCI spec, written for the host, to the
// guest: the root is the rootfs in the shared directory, bind mounts point at
// their copies in the shared directory (volumes maps a mount's index to its
// guest path), and the host-only parts are dropped: hooks (they would run in
// the guest with the host's paths), device nodes (they are the host's), the
// cgroup path (the agent places containers in the guest's hierarchy) and the
// network namespace (containers share the VM's network). The input is not
// modified.
func guestSpec(in *specs.Spec, rootfs string, volumes map[int]string) (*specs.Spec, error) {
	if in == nil || in.Process == nil {
		return nil, fmt.Errorf("OCI spec has no process")
	}
	if in.Linux == nil {
		return nil, fmt.Errorf("OCI spec has no linux section")
	}
	b, err := json.Marshal(in)
	if err != nil {
		return nil, err
	}
	var s specs.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, err
	}
	if s.Root == nil {
		s.Root = &specs.Root{}
	}
	s.Root.Path = rootfs
	s.Hooks = nil

	for i := range s.Mounts {
		if !isBind(s.Mounts[i]) {
			continue
		}
		g, ok := volumes[i]
		if !ok {
			return nil, fmt.Errorf("bind mount of host path %q at %q was not shared with the guest", s.Mounts[i].Source, s.Mounts[i].Destination)
		}
		s.Mounts[i].Source = g
	}

	var ns []specs.LinuxNamespace
	for _, n := range s.Linux.Namespaces {
		switch {
		case n.Type == specs.NetworkNamespace:
			// The VM is the pod's network boundary.
		case n.Path != "":
			return nil, fmt.Errorf("joining the host's %s namespace %q is not possible inside a VM", n.Type, n.Path)
		default:
			ns = append(ns, n)
		}
	}
	s.Linux.Namespaces = ns
	s.Linux.CgroupsPath = ""
	s.Linux.Devices = nil
	return &s, nil
}

// sharedVolumes lists the bind mounts of a spec that must be shared with the
// guest, by index.
func sharedVolumes(s *specs.Spec) []int {
	var out []int
	for i, m := range s.Mounts {
		if isBind(m) && filepath.IsAbs(m.Source) {
			out = append(out, i)
		}
	}
	return out
}

package virtcontainers

import (
	"fmt"
	"path"
	"slices"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/kasa-runtime/kasa/virtcontainers/fsshare"
)

// volumeFor says how the share binds a host path mount of the spec, with
// runc's reading of its options (later ones win, as in runc's specconv):
// "rbind" takes the mounts below the source along, "ro" makes the bind
// itself read-only and "rro" every mount of it, "rslave" (CRI's
// HostToContainer) follows later host mounts below the source. The guest
// then binds it into the container with the same options, so the
// container sees what runc would show it, and the share never offers the
// guest more than the spec grants.
//
// Propagation from the container to the host ("shared", "rshared": CRI's
// Bidirectional) cannot be had: what the container mounts is mounted in
// the pod's VM, which the host does not see. Such a mount is refused
// rather than silently made private.
func volumeFor(m specs.Mount) (fsshare.Volume, error) {
	v := fsshare.Volume{Source: m.Source}
	prop := ""
	for _, o := range m.Options {
		switch o {
		case "rbind":
			v.Recursive = true
		case "ro":
			v.ReadOnly = true
		case "rw":
			v.ReadOnly = false
		case "rro":
			v.RecursiveReadOnly = true
		case "rrw":
			v.RecursiveReadOnly = false
		case "noexec":
			v.NoExec = true
		case "exec":
			v.NoExec = false
		case "shared", "rshared":
			return v, fmt.Errorf("mount %s: propagation %q (Kubernetes mountPropagation: Bidirectional) is not possible in a VM: "+
				"what the container mounts there is mounted in the pod's VM, which the host cannot see; use None or HostToContainer", m.Destination, o)
		case "slave", "rslave", "private", "rprivate", "unbindable", "runbindable":
			prop = o
		}
	}
	v.FollowHost = prop == "slave" || prop == "rslave"
	if v.FollowHost && v.RecursiveReadOnly {
		// Mounts the host adds later would not be read-only: containerd
		// refuses the same combination.
		return v, fmt.Errorf("mount %s: recursive read-only needs private propagation, not %q", m.Destination, prop)
	}
	return v, nil
}

// checkRootfsPropagation refuses a shared root filesystem: its mounts
// would have to reach the host's mount of the container's rootfs.
func checkRootfsPropagation(s *specs.Spec) error {
	if s.Linux == nil {
		return nil
	}
	switch p := s.Linux.RootfsPropagation; p {
	case "shared", "rshared":
		return fmt.Errorf("rootfsPropagation %q is not possible in a VM: the container's mounts stay in the pod's VM, which the host cannot see", p)
	}
	return nil
}

// guestSubmounts are the guest's mounts for the mounts below a volume's
// source (fsshare.Bound.Submounts), to follow the volume's own mount m.
//
// The guest sees a mount below the source as a virtio-fs submount, which
// its kernel mounts when a path first crosses it, with the flags of the
// mount it is crossed from. Under runc's non-recursive "ro" the container
// would so get a read-only copy of what runc leaves writable. Binding each
// one explicitly, from the agent's writable view of the share, gives it
// its own flags: read-only only if it is read-only on the host, where the
// share enforces it anyway. Under "rro" all of it is read-only, and the
// inherited flags are right.
func guestSubmounts(m specs.Mount, subs []fsshare.Submount) []specs.Mount {
	if slices.Contains(m.Options, "rro") {
		return nil
	}
	var prop []string
	for _, o := range m.Options {
		switch o {
		case "slave", "rslave", "private", "rprivate", "unbindable", "runbindable":
			prop = append(prop, o)
		}
	}
	var out []specs.Mount
	for _, sub := range subs {
		opts := append([]string{"rbind"}, prop...)
		if sub.ReadOnly {
			opts = append(opts, "ro")
		}
		out = append(out, specs.Mount{
			Destination: path.Join(m.Destination, sub.Path),
			Type:        "bind",
			Source:      path.Join(m.Source, sub.Path),
			Options:     opts,
		})
	}
	return out
}

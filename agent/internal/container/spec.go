// Package container runs the pod's containers inside the guest with runc's
// libcontainer: OCI spec adaptation, the container and process lifecycle,
// stdio buffering, cgroup statistics and updates, and OOM events.
package container

import (
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containerd/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// adaptOptions say how a host's OCI spec becomes one for the guest.
type adaptOptions struct {
	// cgroupsPath is the container's cgroup, relative to the guest's
	// cgroup2 root, e.g. "/kasa/<id>".
	cgroupsPath string
	// joins are namespaces to join instead of new ones, by type: the
	// sandbox container's, or the sandbox-wide PID namespace of
	// CreateSandbox.sandbox_pidns.
	joins map[specs.LinuxNamespaceType]string
	// guestDevice returns the guest's device node at path, if there is one.
	guestDevice func(path string) (specs.LinuxDevice, bool)
	// hugetlb tells whether the guest has the hugetlb cgroup controller.
	hugetlb bool
}

// adapted is what adaptSpec did beyond rewriting the spec.
type adapted struct {
	// netSysctls are the spec's net.* sysctls. Containers share the VM's
	// network namespace, which is the pod's, so the agent applies them to
	// the guest instead of the container.
	netSysctls map[string]string
	// notes say what was dropped or changed, for the log.
	notes []string
}

// alwaysNew are the namespaces every container gets a new one of, whatever
// the spec says: a namespace path in the spec names a host namespace.
var alwaysNew = []specs.LinuxNamespaceType{specs.PIDNamespace, specs.MountNamespace, specs.IPCNamespace, specs.UTSNamespace}

// adaptSpec validates a spec from the host and rewrites, in place, what
// only makes sense on the host: namespace paths and the network namespace,
// hooks, the cgroup path, host devices, LSM labels, device-specific block
// I/O limits and v1-only resources. Everything the container itself should
// get (capabilities, rlimits, user, env, cwd, mounts, masked and read-only
// paths, sysctls, seccomp...) is left alone. Errors wrap
// errdefs.ErrInvalidArgument.
func adaptSpec(spec *specs.Spec, opts adaptOptions) (*adapted, error) {
	if err := validateSpec(spec); err != nil {
		return nil, fmt.Errorf("OCI spec: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	out := &adapted{}
	note := func(format string, args ...any) { out.notes = append(out.notes, fmt.Sprintf(format, args...)) }

	if spec.Hooks != nil {
		if n := countHooks(spec.Hooks); n > 0 {
			note("dropped %d OCI hook(s): they name host binaries", n)
		}
		spec.Hooks = nil
	}
	if spec.Linux == nil {
		spec.Linux = &specs.Linux{}
	}
	l := spec.Linux
	l.Namespaces = adaptNamespaces(l.Namespaces, opts.joins, note)

	if l.CgroupsPath != "" && l.CgroupsPath != opts.cgroupsPath {
		note("cgroup path %q replaced by %q", l.CgroupsPath, opts.cgroupsPath)
	}
	l.CgroupsPath = opts.cgroupsPath

	l.Devices = adaptDevices(l.Devices, opts.guestDevice, note)
	adaptResources(l.Resources, opts.hugetlb, note)

	for k, v := range l.Sysctl {
		if strings.HasPrefix(strings.ReplaceAll(k, "/", "."), "net.") {
			if out.netSysctls == nil {
				out.netSysctls = map[string]string{}
			}
			out.netSysctls[k] = v
			delete(l.Sysctl, k)
		}
	}
	if l.IntelRdt != nil {
		note("dropped Intel RDT settings: not available in the guest")
		l.IntelRdt = nil
	}
	if l.MountLabel != "" || spec.Process.SelinuxLabel != "" || spec.Process.ApparmorProfile != "" {
		note("dropped SELinux/AppArmor labels: the guest has no LSM")
		l.MountLabel, spec.Process.SelinuxLabel, spec.Process.ApparmorProfile = "", "", ""
	}
	return out, nil
}

func validateSpec(spec *specs.Spec) error {
	if spec == nil {
		return errors.New("empty")
	}
	if spec.Root == nil || spec.Root.Path == "" {
		return errors.New("root.path is required")
	}
	if !filepath.IsAbs(spec.Root.Path) {
		return fmt.Errorf("root.path %q must be an absolute guest path", spec.Root.Path)
	}
	return validateProcess(spec.Process)
}

func validateProcess(p *specs.Process) error {
	if p == nil {
		return errors.New("process is required")
	}
	if len(p.Args) == 0 || p.Args[0] == "" {
		return errors.New("process.args must name a program")
	}
	if p.Cwd != "" && !filepath.IsAbs(p.Cwd) {
		return fmt.Errorf("process.cwd %q must be absolute", p.Cwd)
	}
	return nil
}

func countHooks(h *specs.Hooks) int {
	return len(h.Prestart) + len(h.CreateRuntime) + len(h.CreateContainer) +
		len(h.StartContainer) + len(h.Poststart) + len(h.Poststop)
}

// adaptNamespaces gives the container new PID, mount, IPC and UTS
// namespaces (or joins the ones in joins), no network namespace (it
// shares the VM's), and keeps other namespaces it asks for, as new ones.
func adaptNamespaces(in []specs.LinuxNamespace, joins map[specs.LinuxNamespaceType]string, note func(string, ...any)) []specs.LinuxNamespace {
	var out []specs.LinuxNamespace
	seen := map[specs.LinuxNamespaceType]bool{}
	for _, ns := range in {
		if seen[ns.Type] {
			continue // a duplicate; libcontainer would refuse it
		}
		seen[ns.Type] = true
		if ns.Type == specs.NetworkNamespace {
			if ns.Path != "" {
				note("network namespace %s dropped: containers share the VM's network", ns.Path)
			}
			continue
		}
		if ns.Path != "" {
			note("%s namespace path %s dropped: it names a host namespace", ns.Type, ns.Path)
		}
		out = append(out, specs.LinuxNamespace{Type: ns.Type})
	}
	for _, t := range alwaysNew {
		if !seen[t] {
			out = append(out, specs.LinuxNamespace{Type: t})
		}
	}
	for i := range out {
		out[i].Path = joins[out[i].Type]
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Type < out[j].Type })
	return out
}

// adaptDevices keeps the devices the guest has, with the guest's numbers.
func adaptDevices(in []specs.LinuxDevice, guestDevice func(string) (specs.LinuxDevice, bool), note func(string, ...any)) []specs.LinuxDevice {
	var out []specs.LinuxDevice
	for _, d := range in {
		g, ok := specs.LinuxDevice{}, false
		if guestDevice != nil {
			g, ok = guestDevice(d.Path)
		}
		if !ok {
			note("device %s dropped: the guest has no such device", d.Path)
			continue
		}
		d.Type, d.Major, d.Minor = g.Type, g.Major, g.Minor
		out = append(out, d)
	}
	return out
}

func adaptResources(r *specs.LinuxResources, hugetlb bool, note func(string, ...any)) {
	if r == nil {
		return
	}
	if len(r.HugepageLimits) > 0 && !hugetlb {
		note("hugepage limits dropped: the guest has no hugetlb controller")
		r.HugepageLimits = nil
	}
	if b := r.BlockIO; b != nil {
		if len(b.WeightDevice)+len(b.ThrottleReadBpsDevice)+len(b.ThrottleWriteBpsDevice)+
			len(b.ThrottleReadIOPSDevice)+len(b.ThrottleWriteIOPSDevice) > 0 {
			note("per-device block I/O limits dropped: they name host devices")
		}
		b.WeightDevice, b.ThrottleReadBpsDevice, b.ThrottleWriteBpsDevice = nil, nil, nil
		b.ThrottleReadIOPSDevice, b.ThrottleWriteIOPSDevice = nil, nil
	}
	if r.Network != nil {
		note("network class/priority dropped: cgroup v1 only")
		r.Network = nil
	}
	if r.Rdma != nil {
		note("RDMA limits dropped: no RDMA in the guest")
		r.Rdma = nil
	}
	if m := r.Memory; m != nil {
		//nolint:staticcheck // deprecated fields the host may still send
		m.Kernel, m.KernelTCP = nil, nil
		if m.Swappiness != nil {
			note("memory swappiness dropped: cgroup v1 only")
			m.Swappiness = nil
		}
	}
}

// guestDevice looks path up in the guest's /dev.
func guestDevice(path string) (specs.LinuxDevice, bool) {
	var st unix.Stat_t
	if !strings.HasPrefix(path, "/dev/") || unix.Stat(path, &st) != nil {
		return specs.LinuxDevice{}, false
	}
	d := specs.LinuxDevice{Path: path, Major: int64(unix.Major(uint64(st.Rdev))), Minor: int64(unix.Minor(uint64(st.Rdev)))}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFCHR:
		d.Type = "c"
	case unix.S_IFBLK:
		d.Type = "b"
	default:
		return specs.LinuxDevice{}, false
	}
	return d, true
}

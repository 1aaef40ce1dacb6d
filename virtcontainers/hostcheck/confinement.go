package hostcheck

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"time"

	"github.com/kasa-runtime/kasa/configuration"
	"github.com/kasa-runtime/kasa/virtcontainers"
	"github.com/kasa-runtime/kasa/virtcontainers/fsshare"
	"github.com/kasa-runtime/kasa/virtcontainers/vmmuser"
)

// checkConfinement says which of the VMM's protections are on, and fails
// those this host cannot give: a QEMU without seccomp support, a kernel or
// initrd an unprivileged QEMU cannot read, a virtiofsd Kasa cannot drive.
func checkConfinement(ctx context.Context, cfg *configuration.Config) []Result {
	h := &cfg.Hypervisor
	var out []Result

	identity := Result{Name: "vmm identity", Status: Pass}
	if h.Rootless {
		identity.Detail = fmt.Sprintf("rootless: QEMU runs as a uid/gid of its own per sandbox (%d..%d), no capabilities, its own network/IPC/UTS namespaces",
			vmmuser.Base, vmmuser.Base+vmmuser.Count-1)
		for _, f := range []struct{ key, path string }{{"kernel", h.Kernel}, {"initrd", h.Initrd}, {"image", h.Image}} {
			if fi, err := os.Stat(f.path); err == nil && fi.Mode().Perm()&0o004 == 0 {
				identity.Status = Fail
				identity.Detail = fmt.Sprintf("hypervisor.qemu.%s %s (mode %#o) is not world-readable, so an unprivileged QEMU cannot load it", f.key, f.path, fi.Mode().Perm())
				identity.Remedy = fmt.Sprintf("chmod a+r %s, or set hypervisor.qemu.rootless = false", f.path)
			}
		}
	} else {
		identity.Status = Warn
		identity.Detail = "hypervisor.qemu.rootless = false: QEMU runs as root; a guest that escapes QEMU is root on the host"
	}
	out = append(out, identity)

	sc := Result{Name: "vmm seccomp", Status: Pass}
	switch {
	case h.SeccompSandbox == "":
		sc.Status = Warn
		sc.Detail = `hypervisor.qemu.seccompsandbox = "": QEMU runs without its syscall filter`
	case !qemuHasSeccomp(ctx, h.Path):
		sc.Status = Fail
		sc.Detail = h.Path + " was built without seccomp support (-sandbox)"
		sc.Remedy = `use a QEMU built with libseccomp, or set hypervisor.qemu.seccompsandbox = "" (no filter)`
	default:
		sc.Detail = "QEMU -sandbox " + h.SeccompSandbox
	}
	out = append(out, sc)

	if cfg.Agent.DebugConsoleEnabled {
		out = append(out, Result{Name: "debug console", Status: Warn,
			Detail: "agent.kata.debug_console_enabled = true: every pod's guest serves a root shell, which root on this node reaches with kasa exec"})
	}

	if h.SharedFS == configuration.SharedFSVirtioFS {
		r := Result{Name: "virtiofsd", Status: Pass}
		if desc, err := fsshare.DescribeDaemon(h.VirtioFSDaemon); err != nil {
			r.Status = Fail
			r.Detail = err.Error()
			r.Remedy = "apt-get install qemu-system-common (it ships /usr/lib/qemu/virtiofsd), or set hypervisor.qemu.virtio_fs_daemon"
		} else {
			r = virtiofsdIdentity(h, desc)
		}
		out = append(out, r)
	}
	return out
}

// virtiofsdIdentity says whom virtiofsd runs as, and what that costs on
// this kernel.
func virtiofsdIdentity(h *configuration.HypervisorConfig, desc string) Result {
	r := Result{Name: "virtiofsd", Status: Pass}
	if ok, why := virtcontainers.VirtiofsdUnprivileged(*h); !ok {
		r.Status = Warn
		r.Detail = desc + ": runs as root (" + why + "), confined only by its own namespaces, pivot_root and seccomp; a guest that escapes it is root in a mount namespace holding the share"
		if h.Rootless && h.VirtioFSUserns == configuration.VirtioFSUsernsAuto {
			r.Remedy = `use Linux 6.3 or later, or set hypervisor.qemu.virtio_fs_userns = "on" (virtiofsd without root; volumes on tmpfs are then refused)`
		}
		return r
	}
	release, overlayLayers, tmpfs := fsshare.KernelIdmaps()
	r.Detail = fmt.Sprintf("%s: runs without root, as root of a user namespace of its own (host ids %d and up, 65536 per sandbox), no capability on the host; serves idmapped mounts",
		desc, vmmuser.RangeBase)
	switch {
	case !overlayLayers:
		r.Status = Fail
		r.Detail = fmt.Sprintf("Linux %s cannot mount overlayfs on idmapped layers (5.19 can): the unprivileged virtiofsd could not serve any container's root filesystem", release)
		r.Remedy = `use Linux 5.19 or later, or set hypervisor.qemu.virtio_fs_userns = "off" (virtiofsd as root)`
	case !tmpfs:
		r.Status = Warn
		r.Detail += fmt.Sprintf("; Linux %s cannot idmap tmpfs (6.3 can), so a volume on tmpfs (Kubernetes secrets, configMaps, projected service-account tokens, emptyDir with medium Memory, a hostPath under /run or /dev/shm) is refused", release)
		r.Remedy = `use Linux 6.3 or later for tmpfs volumes, or set hypervisor.qemu.virtio_fs_userns = "off" (virtiofsd as root)`
	}
	return r
}

// qemuHasSeccomp asks QEMU to parse a -sandbox option it cannot accept: a
// QEMU with seccomp support complains about the value, one without about
// the option itself.
func qemuHasSeccomp(ctx context.Context, path string) bool {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, path, "-sandbox", "help").CombinedOutput()
	return bytes.Contains(out, []byte("'enable'"))
}

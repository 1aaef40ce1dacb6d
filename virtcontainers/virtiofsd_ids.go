package virtcontainers

import (
	"context"
	"fmt"

	"github.com/containerd/log"

	"github.com/kasa-runtime/kasa/configuration"
	"github.com/kasa-runtime/kasa/virtcontainers/fsshare"
	"github.com/kasa-runtime/kasa/virtcontainers/vmmuser"
)

// The user namespace of an unprivileged virtiofsd maps exactly one block
// of the sandbox id ranges.
var _ [fsshare.IDRangeSize - vmmuser.RangeSize]struct{}
var _ [vmmuser.RangeSize - fsshare.IDRangeSize]struct{}

// VirtiofsdUnprivileged reports whether virtiofsd runs without root with
// h on this host's kernel, and if not, why.
func VirtiofsdUnprivileged(h configuration.HypervisorConfig) (bool, string) {
	switch {
	case !h.Rootless:
		return false, "hypervisor.qemu.rootless = false"
	case h.VirtioFSUserns == configuration.VirtioFSUsernsOff:
		return false, `hypervisor.qemu.virtio_fs_userns = "off"`
	case h.VirtioFSUserns == configuration.VirtioFSUsernsOn:
		return true, ""
	}
	release, overlayLayers, tmpfs := fsshare.KernelIdmaps()
	if !overlayLayers || !tmpfs {
		return false, fmt.Sprintf(`hypervisor.qemu.virtio_fs_userns = "auto" and Linux %s cannot idmap tmpfs (6.3 can), which Kubernetes secrets, configMaps and service-account tokens live on`, release)
	}
	return true, ""
}

// virtiofsdIDs returns the first host id of the range sandbox id's
// virtiofsd runs as (the root of its user namespace), or 0 when it runs as
// root (VirtiofsdUnprivileged). With "auto", a sandbox whose container
// manager hands over mounted overlays (premounted, CRI-O) gets a root
// virtiofsd too: the unprivileged one could serve none of its containers.
func virtiofsdIDs(ctx context.Context, id string, h configuration.HypervisorConfig, premounted bool) (uint32, error) {
	if ok, _ := VirtiofsdUnprivileged(h); !ok {
		return 0, nil
	}
	if premounted && h.VirtioFSUserns == configuration.VirtioFSUsernsAuto {
		log.G(ctx).Warn(`virtiofsd runs as root for this pod: its container manager hands over root filesystems already mounted (as CRI-O does), and a mounted overlay cannot be idmapped (hypervisor.qemu.virtio_fs_userns = "on" refuses such pods instead)`)
		return 0, nil
	}
	first, err := vmmuser.AllocateRange(id)
	if err != nil {
		return 0, fmt.Errorf("sandbox %s: hypervisor.qemu.virtio_fs_userns: %w", id, err)
	}
	return first, nil
}

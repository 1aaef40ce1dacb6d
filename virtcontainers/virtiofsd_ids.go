package virtcontainers

import (
	"fmt"

	"github.com/kasa-runtime/kasa/configuration"
	"github.com/kasa-runtime/kasa/virtcontainers/fsshare"
	"github.com/kasa-runtime/kasa/virtcontainers/vmmuser"
)

// The user namespace of an unprivileged virtiofsd maps exactly one block
// of the sandbox id ranges.
var _ [fsshare.IDRangeSize - vmmuser.RangeSize]struct{}
var _ [vmmuser.RangeSize - fsshare.IDRangeSize]struct{}

// virtiofsdIDs returns the first host id of the range sandbox id's
// virtiofsd runs as (the root of its user namespace), or 0 when it runs as
// root: with rootless = false or virtio_fs_userns = false.
func virtiofsdIDs(id string, h configuration.HypervisorConfig) (uint32, error) {
	if !h.Rootless || !h.VirtioFSUserns {
		return 0, nil
	}
	first, err := vmmuser.AllocateRange(id)
	if err != nil {
		return 0, fmt.Errorf("sandbox %s: hypervisor.qemu.virtio_fs_userns: %w", id, err)
	}
	return first, nil
}

package hostcheck

import (
	"context"
	"fmt"

	"github.com/kasa-runtime/kasa/configuration"
	"github.com/kasa-runtime/kasa/hypervisor"
	"github.com/kasa-runtime/kasa/hypervisor/qemu"
	"github.com/kasa-runtime/kasa/virtcontainers"
	"github.com/kasa-runtime/kasa/virtcontainers/admission"
)

// checkBootSlots says how many VMs boot at once on this node and how many
// starts are queued for a slot now.
func checkBootSlots(ctx context.Context, cfg *configuration.Config) Result {
	accel, _, err := qemu.ResolveAccelerator(ctx, hypervisor.Accelerator(cfg.Hypervisor.Accelerator), cfg.Hypervisor.Path)
	n, why := virtcontainers.BootSlotCount(cfg, err == nil && accel == hypervisor.AccelKVM)
	return Result{Name: "boot slots", Status: Info,
		Detail: fmt.Sprintf("%d VMs boot at once on this node (%s); %d starts queued now (%s)", n, why, admission.Queued(admission.Dir), admission.Dir)}
}

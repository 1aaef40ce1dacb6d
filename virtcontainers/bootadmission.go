package virtcontainers

import (
	"context"
	"fmt"
	"runtime"
	"time"

	"github.com/containerd/log"

	"github.com/kasa-runtime/kasa/configuration"
	"github.com/kasa-runtime/kasa/hypervisor"
	"github.com/kasa-runtime/kasa/virtcontainers/admission"
)

// maxWallFactor bounds a start in wall time, however starved the VM: a
// dial_timeout of run time, and at most this many dial_timeouts of wall
// time after admission.
const maxWallFactor = 4

// accelerated is the optional driver method that says which accelerator
// CreateVM chose.
type accelerated interface {
	Accelerator() hypervisor.Accelerator
}

// BootSlotCount is how many VMs cfg lets boot at once on this node, and
// why: runtime.max_concurrent_boots, or a number derived from the host's
// CPUs and whether VMs run under KVM.
func BootSlotCount(cfg *configuration.Config, kvm bool) (int, string) {
	if n := cfg.Runtime.MaxConcurrentBoots; n != 0 {
		return n, "runtime.max_concurrent_boots"
	}
	accel := "TCG"
	if kvm {
		accel = "KVM"
	}
	return admission.DefaultSlots(kvm, runtime.NumCPU()), fmt.Sprintf("runtime.max_concurrent_boots = 0: from %d CPUs under %s", runtime.NumCPU(), accel)
}

// BootSlots returns the node's boot slots for cfg (BootSlotCount).
func BootSlots(cfg *configuration.Config, kvm bool) (*admission.Slots, error) {
	n, _ := BootSlotCount(cfg, kvm)
	return admission.New(admission.Dir, n)
}

// admitBoot waits for one of the node's boot slots for a VM the driver has
// created and is about to start. The caller releases the slot once the
// agent answered or the start failed. Waiting is bounded only by ctx (the
// container manager's deadline for the sandbox): a queue is not a failure.
func admitBoot(ctx context.Context, id string, cfg *configuration.Config, hv hypervisor.Hypervisor) (*admission.Slot, error) {
	kvm := false
	if a, ok := hv.(accelerated); ok {
		kvm = a.Accelerator() == hypervisor.AccelKVM
	}
	slots, err := BootSlots(cfg, kvm)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", id, err)
	}
	slot, err := slots.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: the VM never started: %w (runtime.max_concurrent_boots = %d)", id, err, slots.N())
	}
	l := log.G(ctx).WithFields(log.Fields{"slot": slot.Index(), "waited": slot.Waited.Round(time.Millisecond)})
	if slot.Waited >= time.Second {
		l.Info("boot admitted after queueing behind other starts")
	} else {
		l.Debug("boot admitted")
	}
	return slot, nil
}

package virtcontainers

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/kasa-runtime/kasa/configuration"
	"github.com/kasa-runtime/kasa/virtcontainers/admission"
)

func TestBootRecord(t *testing.T) {
	r := NewBootRecord()
	ctx := withBootRecord(context.Background(), r)
	bootRecordFrom(ctx).begin(StepSharedDir)
	bootRecordFrom(ctx).begin(StepVMStart)
	bootRecordFrom(ctx).begin(StepSharedDir) // a step taken again adds to its phase
	bootRecordFrom(ctx).begin(StepVMStart)
	if r.Current() != StepVMStart {
		t.Errorf("current %q", r.Current())
	}
	if _, ok := r.Total(); ok {
		t.Error("total before the end")
	}
	r.finish()
	if total, ok := r.Total(); !ok || total <= 0 {
		t.Errorf("total %v, %v", total, ok)
	}
	p := r.Phases()
	if len(p) != 2 || p[0].Step != StepSharedDir || p[1].Step != StepVMStart || r.Current() != "" {
		t.Errorf("phases %v, current %q", p, r.Current())
	}
	if r.VMStart() != "" {
		t.Errorf("VM start %q before the VM was created", r.VMStart())
	}
	r.setVMStart(VMStartTemplate)
	if r.VMStart() != VMStartTemplate {
		t.Errorf("VM start %q, want %q", r.VMStart(), VMStartTemplate)
	}
	// Without a record nothing is recorded, and nothing breaks.
	var none *BootRecord
	bootRecordFrom(context.Background()).begin(StepAgent)
	none.finish()
	none.setVMStart(VMStartCold)
	if none.Current() != "" || none.Phases() != nil || none.VMStart() != "" {
		t.Error("a nil record recorded")
	}
}

// startVM records how the VM starts once the driver took it: without a
// template, cold, although the VM (here /bin/true) then fails to start.
func TestStartVMRecordsColdStart(t *testing.T) {
	oldRoot, oldDev, oldSlots := VMStateRoot, VhostVsockDevice, admission.Dir
	defer func() { VMStateRoot, VhostVsockDevice, admission.Dir = oldRoot, oldDev, oldSlots }()
	dir := t.TempDir()
	VMStateRoot, admission.Dir = filepath.Join(dir, "vm"), filepath.Join(dir, "slots")
	VhostVsockDevice = filepath.Join(dir, "no-vhost-vsock") // vhost-user-vsock
	cfg := configuration.Default()
	cfg.Factory.EnableTemplate = false
	cfg.Hypervisor.Rootless = false
	cfg.Hypervisor.Path = "/bin/true"
	cfg.Hypervisor.Accelerator = configuration.AccelTCG
	cfg.Runtime.MaxConcurrentBoots = 1
	for _, f := range []*string{&cfg.Hypervisor.Kernel, &cfg.Hypervisor.Initrd} {
		*f = filepath.Join(dir, filepath.Base(*f))
		if err := os.WriteFile(*f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	r := NewBootRecord()
	ctx := withBootRecord(context.Background(), r)
	if _, err := startVM(ctx, "cold-start", cfg, nil, nil, nil); err == nil {
		t.Fatal("a VM whose hypervisor is /bin/true started")
	}
	if r.VMStart() != VMStartCold || r.Current() != StepVMStart {
		t.Errorf("VM start %q failed at %q; want %q at %q", r.VMStart(), r.Current(), VMStartCold, StepVMStart)
	}
	if _, err := os.Stat(filepath.Join(VMStateRoot, "cold-start")); !os.IsNotExist(err) {
		t.Errorf("a failed start left its state directory: %v", err)
	}
}

package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/containerd/log"

	"github.com/kasa-runtime/kasa/hypervisor"
)

// A template and its clones must agree on every device the template has,
// down to the PCI slot, and a clone puts the pod's own devices in slots the
// template left empty, where the guest's agent finds them by rescanning the
// bus (agent/internal/restore). So a snapshot VM places every device itself.
//
// Slots 3 and 4 are for the vhost-user devices a clone gets after its
// restore (lateDevices): on q35 they hold the template's PCIe root ports.
// The devices a clone has from the start sit in slots the template leaves
// empty.
const (
	slotRNG       = 2
	slotLateAgent = 3
	slotLateFS    = 4
	slotNIC       = 5
	maxSnapNICs   = 8
	slotAgent     = slotNIC + maxSnapNICs
	slotFS        = slotAgent + 1
	slotBalloon   = slotFS + 1
)

// saveWait bounds SaveVM's wait for the device state to be written, and a
// clone's wait for it to be read, when ctx has no deadline.
const saveWait = 30 * time.Second

// pciAddr is the addr= option of a device in slot on a snapshot VM; "" otherwise.
func pciAddr(cfg hypervisor.VMConfig, slot int) string {
	if cfg.Snapshot == nil {
		return ""
	}
	return ",addr=" + strconv.Itoa(slot)
}

// hasPodDevices reports whether the VM gets the devices of one pod: every
// VM but a template.
func hasPodDevices(cfg hypervisor.VMConfig) bool {
	return cfg.Snapshot == nil || cfg.Snapshot.Role != hypervisor.SnapshotTemplate
}

// validateSnapshot checks what a template or a clone needs.
func validateSnapshot(cfg hypervisor.VMConfig) error {
	s := cfg.Snapshot
	if s == nil {
		return nil
	}
	var errs []error
	if s.Role != hypervisor.SnapshotTemplate && s.Role != hypervisor.SnapshotClone {
		errs = append(errs, fmt.Errorf("Snapshot.Role %q is not one of %s, %s", s.Role, hypervisor.SnapshotTemplate, hypervisor.SnapshotClone))
	}
	if s.Memory == nil || s.State == nil {
		errs = append(errs, errors.New("Snapshot needs both its Memory and its State file"))
	}
	if cfg.MachineType == MachineMicroVM {
		errs = append(errs, fmt.Errorf("Snapshot: MachineType %s has no PCI bus for a clone's devices: %w", cfg.MachineType, hypervisor.ErrNotSupported))
	}
	if len(cfg.NICs) > maxSnapNICs {
		errs = append(errs, fmt.Errorf("Snapshot: %d NICs, a clone has slots for %d", len(cfg.NICs), maxSnapNICs))
	}
	return errors.Join(errs...)
}

// snapshotMemoryArgs maps the guest's RAM from the inherited Snapshot.Memory,
// shared: a vhost-user backend can map it, and with x-ignore-shared the
// migration stream leaves it out (the RAM is the file).
func snapshotMemoryArgs(cfg hypervisor.VMConfig, fds fdPlan) []string {
	mem := strconv.FormatUint(uint64(cfg.MemoryMiB), 10) + "M"
	return []string{
		"-object", "memory-backend-file,id=mem,size=" + mem + ",mem-path=" + procFD(fds.snapMemory) + ",share=on",
		"-numa", "node,memdev=mem",
	}
}

// incomingArgs makes a clone wait for its device state (StartVM sends it).
func incomingArgs(cfg hypervisor.VMConfig) []string {
	if cfg.Snapshot == nil || cfg.Snapshot.Role != hypervisor.SnapshotClone {
		return nil
	}
	return []string{"-incoming", "defer"}
}

// ignoreShared is the migration capability that leaves shared RAM out of
// the stream, on both ends.
var ignoreShared = map[string]any{"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}}}

// restore loads a clone's device state from its inherited Snapshot.State
// and runs the guest. QEMU has been started with -incoming defer.
func (q *QEMU) restore(ctx context.Context) error {
	ctx, cancel := withDefaultTimeout(ctx, saveWait)
	defer cancel()
	start := time.Now()
	if _, err := q.qmp.Execute(ctx, "migrate-set-capabilities", ignoreShared); err != nil {
		return fmt.Errorf("restoring from the template: %w", err)
	}
	if _, err := q.qmp.Execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:" + strconv.Itoa(planFDs(q.cfg).snapState)}); err != nil {
		return fmt.Errorf("restoring from the template: %w", err)
	}
	for {
		st, err := q.qmp.QueryStatus(ctx)
		if err != nil {
			return fmt.Errorf("restoring from the template: %w", err)
		}
		if st.Status != "inmigrate" {
			if st.Status != "paused" && st.Status != "postmigrate" && st.Status != "prelaunch" {
				return fmt.Errorf("restoring from the template: VM is %q after loading its state", st.Status)
			}
			break
		}
		if err := sleepCtx(ctx, 5*time.Millisecond); err != nil {
			return fmt.Errorf("restoring from the template: device state not loaded: %w", err)
		}
	}
	loaded := time.Since(start)
	if err := q.addLateDevices(ctx); err != nil {
		return fmt.Errorf("restoring from the template: adding the pod's devices: %w", err)
	}
	if _, err := q.qmp.Execute(ctx, "cont", nil); err != nil {
		return fmt.Errorf("restoring from the template: resuming: %w", err)
	}
	if in := q.cfg.Snapshot.ConsoleInput; len(in) > 0 {
		// QEMU takes the bytes as the guest's UART accepts them; the
		// socket's buffer holds them meanwhile.
		q.console.SetWriteDeadline(time.Now().Add(saveWait))
		_, err := q.console.Write(in)
		q.console.SetWriteDeadline(time.Time{})
		if err != nil {
			return fmt.Errorf("restoring from the template: writing to the guest's console: %w", err)
		}
	}
	q.logger(ctx).WithFields(log.Fields{"load": loaded.Round(time.Millisecond), "devices": (time.Since(start) - loaded).Round(time.Millisecond)}).Info("restored from the template")
	return nil
}

// SaveVM pauses a template VM and writes its device state to the inherited
// Snapshot.State; its RAM is already in Snapshot.Memory. The VM stays
// paused until StopVM.
func (q *QEMU) SaveVM(ctx context.Context) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.state != stateRunning || q.cfg.Snapshot == nil || q.cfg.Snapshot.Role != hypervisor.SnapshotTemplate {
		return q.invalidTransition(statePaused)
	}
	ctx, cancel := withDefaultTimeout(ctx, saveWait)
	defer cancel()
	if _, err := q.qmp.Execute(ctx, "stop", nil); err != nil {
		return fmt.Errorf("saving the template: pausing: %w", err)
	}
	q.state = statePaused
	if _, err := q.qmp.Execute(ctx, "migrate-set-capabilities", ignoreShared); err != nil {
		return fmt.Errorf("saving the template: %w", err)
	}
	// QEMU 7.2 takes only a named descriptor for an outgoing migration.
	if err := q.qmp.SendFD(ctx, "template-state", q.cfg.Snapshot.State); err != nil {
		return fmt.Errorf("saving the template: %w", err)
	}
	if _, err := q.qmp.Execute(ctx, "migrate", map[string]any{"uri": "fd:template-state"}); err != nil {
		return fmt.Errorf("saving the template: %w", err)
	}
	for {
		m, err := q.qmp.QueryMigrate(ctx)
		if err != nil {
			return fmt.Errorf("saving the template: %w", err)
		}
		switch m.Status {
		case "completed":
			q.logger(ctx).Info("template saved")
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("saving the template: migration %s: %s", m.Status, m.ErrorDesc)
		}
		if err := sleepCtx(ctx, 5*time.Millisecond); err != nil {
			return fmt.Errorf("saving the template: device state not written: %w", err)
		}
	}
}

func withDefaultTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, d)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

func isClone(cfg hypervisor.VMConfig) bool {
	return cfg.Snapshot != nil && cfg.Snapshot.Role == hypervisor.SnapshotClone
}

// QEMU 7.2 refuses to load a VM's state while it has a device that cannot
// migrate, and the vhost-user devices (vsock, virtio-fs) cannot: a clone
// gets them after its state is loaded, before it runs. q35's root bus takes
// no hotplug, so the template has a PCIe root port in their slots; pc's
// root bus takes them directly. Either way the guest finds them with its
// next bus scan.
func hotplugPortArgs(cfg hypervisor.VMConfig) []string {
	if cfg.MachineType != MachineQ35 {
		return nil
	}
	var args []string
	for _, slot := range []int{slotLateAgent, slotLateFS} {
		n := strconv.Itoa(slot)
		args = append(args, "-device", "pcie-root-port,id=kasa-port"+n+",bus=pcie.0,chassis="+n+",addr="+n)
	}
	return args
}

// lateDevice is a vhost-user device a clone gets after its restore: the
// descriptor QEMU is given (getfd), the chardev on it and the device.
type lateDevice struct {
	fdName  string
	file    *os.File
	chardev map[string]any
	device  map[string]any
}

// lateDevices lists a clone's vhost-user devices in the order they are
// added. vsockEnd is QEMU's end of the vsock backend's socket.
func lateDevices(cfg hypervisor.VMConfig, vsockEnd *os.File) []lateDevice {
	place := func(dev map[string]any, slot int) map[string]any {
		if cfg.MachineType == MachineQ35 {
			dev["bus"], dev["addr"] = "kasa-port"+strconv.Itoa(slot), "0"
		} else {
			dev["bus"], dev["addr"] = "pci.0", strconv.Itoa(slot)
		}
		return dev
	}
	chardev := func(id, fdName string) map[string]any {
		return map[string]any{"id": id, "backend": map[string]any{"type": "socket", "data": map[string]any{
			"addr": map[string]any{"type": "fd", "data": map[string]any{"str": fdName}}, "server": false}}}
	}
	var out []lateDevice
	if cfg.AgentTransport == hypervisor.TransportVhostUserVsock && vsockEnd != nil {
		out = append(out, lateDevice{fdName: "vsock", file: vsockEnd, chardev: chardev("vsock", "vsock"),
			device: place(map[string]any{"driver": "vhost-user-vsock-pci", "id": "vsock0", "chardev": "vsock"}, slotLateAgent)})
	}
	if fs := cfg.SharedFS; fs != nil && fs.Type == hypervisor.SharedFSVirtioFS && fs.Conn != nil {
		out = append(out, lateDevice{fdName: "vfs", file: fs.Conn, chardev: chardev("vfs", "vfs"),
			device: place(map[string]any{"driver": "vhost-user-fs-pci", "id": "vfs0", "chardev": "vfs", "tag": fs.Tag}, slotLateFS)})
	}
	return out
}

// addLateDevices adds a restored clone's vhost-user devices.
func (q *QEMU) addLateDevices(ctx context.Context) error {
	for _, d := range lateDevices(q.cfg, q.lateVsock) {
		if err := q.qmp.SendFD(ctx, d.fdName, d.file); err != nil {
			return err
		}
		if _, err := q.qmp.Execute(ctx, "chardev-add", d.chardev); err != nil {
			return err
		}
		if _, err := q.qmp.Execute(ctx, "device_add", d.device); err != nil {
			return err
		}
	}
	if q.lateVsock != nil {
		q.lateVsock.Close() // QEMU has its copy
		q.lateVsock = nil
	}
	return nil
}

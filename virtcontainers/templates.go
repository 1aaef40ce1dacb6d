package virtcontainers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"reflect"
	"time"

	"github.com/containerd/log"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/configuration"
	"github.com/kasa-runtime/kasa/hypervisor"
	"github.com/kasa-runtime/kasa/virtcontainers/template"
	"github.com/kasa-runtime/kasa/virtcontainers/vmmuser"
)

// templateStopWait bounds the stop of a template VM once it is saved.
const templateStopWait = 10 * time.Second

// TemplateUsable reports whether a pod whose configuration is pod, derived
// from the file's configuration file by annotations and sizing, may start
// from a template. Only the file's own VM shape may: a template per
// tenant-chosen size or override would let tenants fill the template
// directory (a tmpfs) at will. Such pods boot cold.
func TemplateUsable(file, pod *configuration.Config) bool {
	return pod.Factory.EnableTemplate && reflect.DeepEqual(file.Hypervisor, pod.Hypervisor)
}

// TemplateStore is the configured template directory.
func TemplateStore(cfg *configuration.Config) template.Store {
	return template.Store{Root: cfg.Factory.TemplatePath}
}

// TemplateSpec is the boot configuration a template of cfg has, and its key.
func TemplateSpec(cfg *configuration.Config) (template.Spec, string, error) {
	vc := templateVMConfig("template", cfg)
	spec := template.Spec{
		QEMU: vc.Path, Kernel: vc.Kernel, Initrd: vc.Initrd, Image: vc.Image, Firmware: vc.Firmware,
		MachineType: vc.MachineType, VCPUs: vc.VCPUs, MemoryMiB: vc.MemoryMiB,
		KernelParams: vc.KernelParams, Accelerator: string(vc.Accelerator),
		Transport: string(vc.AgentTransport), SharedFS: string(cfg.Hypervisor.SharedFS), Debug: vc.Debug,
		FreePageReporting: vc.FreePageReporting,
	}
	key, err := template.Key(spec)
	return spec, key, err
}

// templateVMConfig is the VM a template of cfg is, and each of its clones
// before the pod's own devices are added: the guest kernel is told that it
// is a template (agent/internal/restore).
func templateVMConfig(id string, cfg *configuration.Config) hypervisor.VMConfig {
	vc := VMConfigFor(id, cfg)
	vc.KernelParams = append(vc.KernelParams, api.TemplateParam)
	return vc
}

// cloneSnapshot returns the snapshot a sandbox of cfg starts from, making
// the template first if there is none (or a broken one). The caller closes
// the snapshot's files once the VM has started.
func cloneSnapshot(ctx context.Context, cfg *configuration.Config) (*hypervisor.Snapshot, string, error) {
	spec, key, err := TemplateSpec(cfg)
	if err != nil {
		return nil, "", err
	}
	store := TemplateStore(cfg)
	if _, err := store.Open(key); err != nil && !errors.Is(err, template.ErrNotFound) {
		log.G(ctx).WithError(err).Warn("VM template is broken; making it again")
	}
	m, err := store.Get(ctx, key, spec, func(ctx context.Context, mem, state *os.File) error {
		return bootTemplate(ctx, cfg, key, mem, state)
	})
	if err != nil {
		return nil, key, err
	}
	snap, err := store.Clone(m)
	return snap, key, err
}

// CreateTemplate makes (or remakes) the template of cfg; kasa template create.
func CreateTemplate(ctx context.Context, cfg *configuration.Config) (*template.Manifest, error) {
	spec, key, err := TemplateSpec(cfg)
	if err != nil {
		return nil, err
	}
	return TemplateStore(cfg).Create(ctx, key, spec, func(ctx context.Context, mem, state *os.File) error {
		return bootTemplate(ctx, cfg, key, mem, state)
	})
}

// bootTemplate boots the template VM of cfg in mem, waits until its agent
// says it may be saved, saves its device state to state and stops it. The
// VM runs confined as any sandbox's, under an identity of its own.
func bootTemplate(ctx context.Context, cfg *configuration.Config, key string, mem, state *os.File) (retErr error) {
	id := "template-" + key[:16]
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("template", key))
	hv, err := newHypervisor(cfg.HypervisorName)
	if err != nil {
		return err
	}
	saver, ok := hv.(hypervisor.Saver)
	if !ok {
		return fmt.Errorf("hypervisor %s cannot save a VM: %w", cfg.HypervisorName, hypervisor.ErrNotSupported)
	}
	vc := templateVMConfig(id, cfg)
	// A maker that died (its QEMU with it: parent-death signal) may have
	// left the VM's state; the template lock makes it ours to remove.
	if err := os.RemoveAll(vc.StateDir); err != nil {
		return err
	}
	vc.Snapshot = &hypervisor.Snapshot{Role: hypervisor.SnapshotTemplate, Memory: mem, State: state}
	if cfg.Hypervisor.Rootless {
		uid, err := vmmuser.Allocate(id)
		if err != nil {
			return fmt.Errorf("hypervisor.qemu.rootless: %w", err)
		}
		defer vmmuser.Release(uid, id)
		vc.Confinement.UID, vc.Confinement.GID = uid, uid
		// QEMU maps the memory by re-opening its descriptor.
		if err := mem.Chown(int(uid), int(uid)); err != nil {
			return err
		}
	}
	if err := hv.CreateVM(ctx, vc); err != nil {
		return fmt.Errorf("create template VM: %w", err)
	}
	// The template's boot is a boot like any other: it takes a slot.
	slot, err := admitBoot(ctx, id, cfg, hv)
	if err != nil {
		return err
	}
	defer slot.Release()
	start := time.Now()
	if err := hv.StartVM(ctx); err != nil {
		return fmt.Errorf("start template VM: %w", err)
	}
	defer func() {
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), templateStopWait)
		defer cancel()
		if err := hv.StopVM(stopCtx); err != nil && retErr == nil {
			retErr = fmt.Errorf("stopping the saved template VM: %w", err)
		}
	}()
	if err := awaitTemplateReady(ctx, hv, cfg.Agent.DialTimeout); err != nil {
		return err
	}
	booted := time.Since(start)
	if err := saver.SaveVM(ctx); err != nil {
		return err
	}
	log.G(ctx).WithFields(log.Fields{"boot": booted.Round(time.Millisecond), "save": (time.Since(start) - booted).Round(time.Millisecond)}).Info("VM template made")
	return nil
}

// awaitTemplateReady waits for the template guest's agent to print
// api.TemplateReadyLine on the console.
func awaitTemplateReady(ctx context.Context, hv hypervisor.Hypervisor, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		if b, err := os.ReadFile(hv.ConsolePath()); err == nil && hasLine(b, api.TemplateReadyLine) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-hv.Done():
			return fmt.Errorf("template VM exited before it was ready (%s): guest console ends with:\n%s", exitReason(hv.ExitError()), tailOf(hv.ConsolePath()))
		case <-deadline.C:
			return fmt.Errorf("template VM not ready within %s (agent.kata.dial_timeout); guest console ends with:\n%s", timeout, tailOf(hv.ConsolePath()))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// cloneFromTemplate makes vc a clone of the template of cfg. A template
// that cannot be made (a host or configuration problem the log names)
// leaves vc as it is, and the sandbox boots cold: templating is a speed-up,
// not a reason for a pod to fail.
func cloneFromTemplate(ctx context.Context, id string, cfg *configuration.Config, vc *hypervisor.VMConfig) (*hypervisor.Snapshot, error) {
	start := time.Now()
	snap, key, err := cloneSnapshot(ctx, cfg)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("sandbox %s: %w", id, err)
		}
		log.G(ctx).WithError(err).Warn("no VM template for this sandbox; booting it cold")
		return nil, nil
	}
	if uid := vc.Confinement.UID; uid != 0 {
		// QEMU maps the memory by re-opening its descriptor.
		if err := snap.Memory.Chown(int(uid), int(uid)); err != nil {
			snap.Memory.Close()
			snap.State.Close()
			return nil, fmt.Errorf("sandbox %s: clone memory: %w", id, err)
		}
	}
	vc.Snapshot = snap
	log.G(ctx).WithFields(log.Fields{"template": key, "elapsed": time.Since(start).Round(time.Millisecond)}).Info("starting from a VM template")
	return snap, nil
}

// hasLine reports whether the console log b has line as a whole line (the
// guest's tty ends lines with "\r\n").
func hasLine(b []byte, line string) bool {
	for _, l := range bytes.Split(b, []byte("\n")) {
		if string(bytes.TrimSuffix(l, []byte("\r"))) == line {
			return true
		}
	}
	return false
}

// TemplateState says whether sandboxes of cfg start from a template, and
// which: what kasa check and kasa env show.
type TemplateState struct {
	Enabled bool   `json:"enabled"`
	Path    string `json:"path,omitempty"`
	Key     string `json:"key,omitempty"`
	// Status is "ready", "not made yet (the next sandbox makes it)" or why
	// the template is unusable (it is then made again).
	Status string `json:"status,omitempty"`
}

// TemplateStatus reports the template state of cfg.
func TemplateStatus(cfg *configuration.Config) TemplateState {
	st := TemplateState{Enabled: cfg.Factory.EnableTemplate, Path: cfg.Factory.TemplatePath}
	if ok, why := cfg.TemplatesApply(); !ok {
		st.Enabled, st.Status = false, why
		return st
	}
	_, key, err := TemplateSpec(cfg)
	if err != nil {
		st.Status = err.Error()
		return st
	}
	st.Key = key
	switch _, err := TemplateStore(cfg).Open(key); {
	case err == nil:
		st.Status = "ready"
	case errors.Is(err, template.ErrNotFound):
		st.Status = "not made yet (the next sandbox makes it)"
	default:
		st.Status = err.Error() + " (the next sandbox makes it again)"
	}
	return st
}

// Package virtcontainers runs Kasa sandboxes: it boots the VM through a
// hypervisor driver, reaches the agent inside it and tears everything down.
package virtcontainers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/log"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/agent/client"
	"github.com/kasa-runtime/kasa/configuration"
	"github.com/kasa-runtime/kasa/hypervisor"
	"github.com/kasa-runtime/kasa/hypervisor/qemu"
	"github.com/kasa-runtime/kasa/hypervisor/vsock"
	"github.com/kasa-runtime/kasa/virtcontainers/admission"
	"github.com/kasa-runtime/kasa/virtcontainers/vmmuser"
)

// VMStateRoot is where each VM keeps its sockets and console log (docs/architecture.md, "Contracts").
var VMStateRoot = "/run/kasa/vm"

const (
	// destroyTimeout bounds the agent's DestroySandbox answer.
	destroyTimeout = 2 * time.Second
	// powerOffWait is how long a VM may take to go away after DestroySandbox
	// before the hypervisor is told to quit.
	powerOffWait = 3 * time.Second
	// consoleTail is how much of the console an error carries.
	consoleTail = 2048
)

// VhostVsockDevice is the kernel's vhost-vsock device SelectTransport
// probes; a variable for tests. The driver claims the VM's CID on it.
var VhostVsockDevice = vsock.VhostVsockDevice

// VM is one running guest with its agent connected.
type VM struct {
	ID     string
	hv     hypervisor.Hypervisor
	Agent  *client.Client
	Config hypervisor.VMConfig
}

// driverFor is the one place a driver is chosen.
func driverFor(name configuration.HypervisorName) (hypervisor.Driver, error) {
	switch name {
	case configuration.HypervisorQEMU:
		return qemu.Driver{}, nil
	default:
		return nil, fmt.Errorf("hypervisor %q: %w", name, hypervisor.ErrNotSupported)
	}
}

func newHypervisor(name configuration.HypervisorName) (hypervisor.Hypervisor, error) {
	d, err := driverFor(name)
	if err != nil {
		return nil, err
	}
	return d.New(), nil
}

// SelectTransport resolves the configured agent transport for this host and
// says why; kasa check reports the same choice. auto prefers the kernel's
// vhost-vsock, which needs /dev/vhost-vsock, and otherwise takes Kasa's own
// vhost-user-vsock backend, which works on any host: either way the agent
// is on AF_VSOCK. virtio-serial is used only when configured.
func SelectTransport(want configuration.AgentTransport) (hypervisor.AgentTransport, string) {
	return selectTransport(want, vsock.VhostVsockUsable(VhostVsockDevice))
}

func selectTransport(want configuration.AgentTransport, vhostVsockErr error) (hypervisor.AgentTransport, string) {
	switch want {
	case configuration.TransportAuto, "":
		if vhostVsockErr == nil {
			return hypervisor.TransportVsock, "auto: " + VhostVsockDevice + " is usable (kernel vhost-vsock)"
		}
		return hypervisor.TransportVhostUserVsock, fmt.Sprintf("auto: kernel vhost-vsock unusable (%v), so Kasa's user-space vhost-user-vsock backend", vhostVsockErr)
	case configuration.TransportVsock:
		if vhostVsockErr != nil {
			return hypervisor.TransportVsock, fmt.Sprintf("set by agent.kata.transport, but kernel vhost-vsock is unusable (%v): sandboxes will fail to start", vhostVsockErr)
		}
		return hypervisor.TransportVsock, "set by agent.kata.transport"
	default:
		return hypervisor.AgentTransport(want), "set by agent.kata.transport"
	}
}

// VMConfigFor turns the configuration into a driver's VM description.
func VMConfigFor(id string, cfg *configuration.Config) hypervisor.VMConfig {
	h := cfg.Hypervisor
	transport, _ := SelectTransport(cfg.Agent.Transport)
	return hypervisor.VMConfig{
		ID:             id,
		StateDir:       filepath.Join(VMStateRoot, id),
		Path:           h.Path,
		Kernel:         h.Kernel,
		Initrd:         h.Initrd,
		Image:          h.Image,
		KernelParams:   append(h.KernelParamsList(), agentKernelParams(cfg.Agent)...),
		MachineType:    string(h.MachineType),
		Firmware:       h.Firmware,
		VCPUs:          uint32(h.DefaultVCPUs),
		MemoryMiB:      uint32(h.DefaultMemory),
		Accelerator:    hypervisor.Accelerator(h.Accelerator),
		AgentTransport: transport,
		Debug:          h.EnableDebug,

		FreePageReporting: h.ReclaimGuestFreedMemory,
		// The identity (rootless) is allocated per sandbox by startVM.
		Confinement: hypervisor.Confinement{
			Seccomp:           h.SeccompSandbox,
			PrivateNamespaces: !cfg.Runtime.DisableNewNetns,
		},
	}
}

// StartVM boots a VM for sandbox id and waits until its agent answers, for
// at most the configured dial timeout. On error nothing is left behind: no
// hypervisor process, no state directory.
func StartVM(ctx context.Context, id string, cfg *configuration.Config) (*VM, error) {
	return startVM(log.WithLogger(ctx, log.G(ctx).WithField("sandbox", id)), id, cfg, nil, nil, nil)
}

func startVM(ctx context.Context, id string, cfg *configuration.Config, shared *hypervisor.SharedFS, nics []hypervisor.NIC, cgroupProcs []string) (_ *VM, retErr error) {
	boot := bootRecordFrom(ctx)
	boot.begin(StepVMCreate)
	if err := validID(id); err != nil {
		return nil, err
	}
	if err := errors.Join(cfg.CheckPaths()...); err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", id, err)
	}
	hv, err := newHypervisor(cfg.HypervisorName)
	if err != nil {
		return nil, err
	}
	vm := &VM{ID: id, hv: hv, Config: VMConfigFor(id, cfg)}
	vm.Config.SharedFS = shared
	vm.Config.NICs = nics
	vm.Config.Confinement.CgroupProcs = cgroupProcs
	if cfg.Hypervisor.Rootless {
		uid, err := vmmuser.Allocate(id)
		if err != nil {
			return nil, fmt.Errorf("sandbox %s: hypervisor.qemu.rootless: %w", id, err)
		}
		defer func() {
			if retErr != nil {
				vmmuser.Release(uid, id)
			}
		}()
		vm.Config.Confinement.UID, vm.Config.Confinement.GID = uid, uid
	}
	if ok, why := cfg.TemplatesApply(); !ok && cfg.Factory.EnableTemplate {
		log.G(ctx).WithField("reason", why).Info("no VM template for this sandbox; booting it cold")
	} else if ok {
		snap, err := cloneFromTemplate(ctx, id, cfg, &vm.Config)
		if err != nil {
			return nil, err
		}
		if snap != nil {
			defer snap.Memory.Close() // QEMU has its own copies once started
			defer snap.State.Close()
		}
	}
	err = hv.CreateVM(ctx, vm.Config)
	if err != nil && vm.Config.Snapshot != nil {
		// A pod the template cannot serve (more NICs than it has slots):
		// boot it cold.
		log.G(ctx).WithError(err).Warn("the VM template cannot serve this sandbox; booting it cold")
		vm.Config.Snapshot = nil
		err = hv.CreateVM(ctx, vm.Config)
	}
	if err != nil {
		if errors.Is(err, hypervisor.ErrTransportUnavailable) && vm.Config.AgentTransport == hypervisor.TransportVsock {
			return nil, fmt.Errorf("sandbox %s: create VM: %w (set agent.kata.transport = \"auto\" to use vhost-user-vsock instead)", id, err)
		}
		return nil, fmt.Errorf("sandbox %s: create VM: %w", id, err)
	}
	// The driver took the VM as it is now: a clone of the template, or,
	// without a template or after the fallback above, a cold boot.
	if vm.Config.Snapshot != nil {
		boot.setVMStart(VMStartTemplate)
	} else {
		boot.setVMStart(VMStartCold)
	}
	// From here on the driver holds what CreateVM claimed (a guest CID):
	// on failure StopVM, idempotent, releases it and whatever StartVM left
	// running.
	stopFailed := func() {
		if retErr == nil {
			return
		}
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := hv.StopVM(stopCtx); err != nil {
			log.G(ctx).WithError(err).Warn("stopping the VM after a failed start")
		}
	}
	defer stopFailed()
	boot.begin(StepAdmission)
	slot, err := admitBoot(ctx, id, cfg, hv)
	if err != nil {
		return nil, err
	}
	defer func() {
		stopFailed()   // the failed VM is gone first,
		slot.Release() // or the agent answered
	}()
	start := time.Now()
	boot.begin(StepVMStart)
	clock := admission.NewRunClock()
	if err := hv.StartVM(ctx); err != nil {
		return nil, fmt.Errorf("sandbox %s: start VM: %w", id, err)
	}
	clock.Watch(hv.PID())
	clock.Watch(os.Getpid()) // the shim relays the agent's answer

	boot.begin(StepAgent)
	agent, err := vm.dialAgent(ctx, clock, cfg.Agent.DialTimeout)
	if err != nil {
		return nil, err
	}
	vm.Agent = agent
	_, _, starved := clock.Elapsed()
	log.G(ctx).WithFields(log.Fields{"elapsed": time.Since(start).Round(time.Millisecond), "cpu_wait": starved.Round(time.Millisecond)}).Info("agent answered")
	return vm, nil
}

// dialAgent connects and checks the agent, giving up when the VM dies or
// has used timeout of run time (clock: the time it could run since its
// admission, not the time it waited for a host CPU); the error then
// carries the end of the guest console.
func (vm *VM) dialAgent(ctx context.Context, clock *admission.RunClock, timeout time.Duration) (*client.Client, error) {
	dctx, cancel := admission.WithRunTimeout(ctx, clock, timeout, maxWallFactor*timeout)
	defer cancel()
	go func() {
		select {
		case <-vm.hv.Done():
			cancel()
		case <-dctx.Done():
		}
	}()
	c, err := client.Connect(dctx, vm.agentDialer())
	if err == nil {
		err = checkAgent(dctx, c)
		if err != nil {
			c.Close()
		}
	}
	if err == nil {
		return c, nil
	}
	// A dying VM often closes the agent's socket a moment before the
	// hypervisor process is reaped; give the exit the chance to be the reason.
	select {
	case <-vm.hv.Done():
	case <-time.After(time.Second):
	}
	select {
	case <-vm.hv.Done():
		return nil, fmt.Errorf("sandbox %s: VM exited before its agent answered (%s)%s", vm.ID, exitReason(vm.hv.ExitError()), vm.consoleTail())
	default:
	}
	var rt *admission.RunTimeoutError
	if errors.As(context.Cause(dctx), &rt) && ctx.Err() == nil {
		return nil, fmt.Errorf("sandbox %s: the VM started but its agent did not answer within %s (agent.kata.dial_timeout): %v: %w%s", vm.ID, timeout, rt, err, vm.consoleTail())
	}
	return nil, fmt.Errorf("sandbox %s: reach agent: %w", vm.ID, err)
}

// DialGuest opens one stream to port of the guest, through the driver (see
// hypervisor.Hypervisor.DialGuest): the agent's (api.AgentVsockPort) or
// another guest service's.
func (vm *VM) DialGuest(ctx context.Context, port uint32) (net.Conn, error) {
	return vm.hv.DialGuest(ctx, port)
}

// agentDialer dials the agent's port, for client.Connect.
func (vm *VM) agentDialer() client.DialFunc {
	return func(ctx context.Context) (net.Conn, error) { return vm.hv.DialGuest(ctx, api.AgentVsockPort) }
}

func checkAgent(ctx context.Context, c *client.Client) error {
	v, err := c.Version(ctx)
	if err != nil {
		return err
	}
	if v.GetApiVersion() < api.APIVersion {
		return fmt.Errorf("agent %s speaks API v%d, this runtime needs v%d: rebuild the guest image", v.GetAgentVersion(), v.GetApiVersion(), api.APIVersion)
	}
	// A guest that does not say it is serving does not get a pod
	// (TestHostileGuestRefusesToServe).
	if err := c.Check(ctx); err != nil {
		return err
	}
	// A guest boots with the RTC's idea of time; give it the host's exactly.
	return c.SetGuestDateTime(ctx, time.Now())
}

func exitReason(err error) string {
	if err == nil {
		return "the guest reset or powered off"
	}
	return err.Error()
}

func (vm *VM) consoleTail() string {
	t := tailOf(vm.hv.ConsolePath())
	if t == "" {
		return ""
	}
	return "; guest console ends with:\n" + t
}

// tailOf is the end of a guest console log, trimmed; "" if there is none.
func tailOf(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	// Only the end: the guest writes the console, and however capped the
	// file is, an error message needs no more.
	if st, err := f.Stat(); err == nil && st.Size() > consoleTail {
		f.Seek(-consoleTail, io.SeekEnd)
	}
	b, _ := io.ReadAll(io.LimitReader(f, consoleTail))
	return strings.TrimRight(string(b), "\n")
}

// Stop powers the guest off through its agent, then makes sure the
// hypervisor is gone and its state removed. It is idempotent.
func (vm *VM) Stop(ctx context.Context) error {
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("sandbox", vm.ID))
	if vm.Agent != nil {
		select {
		case <-vm.hv.Done():
		default:
			dctx, cancel := context.WithTimeout(ctx, destroyTimeout)
			err := vm.Agent.DestroySandbox(dctx)
			cancel()
			if err != nil {
				// A guest that does not answer will not power off either:
				// go straight to the hypervisor.
				log.G(ctx).WithError(err).Warn("agent DestroySandbox failed; stopping the VM through the hypervisor")
			} else {
				select {
				case <-vm.hv.Done():
				case <-time.After(powerOffWait):
					log.G(ctx).Warn("guest did not power off; asking the hypervisor to quit")
				}
			}
		}
		vm.Agent.Close()
	}
	if err := vm.hv.StopVM(ctx); err != nil {
		return err
	}
	return vmmuser.Release(vm.Config.Confinement.UID, vm.ID)
}

// Done is closed when the VM's hypervisor process has exited.
func (vm *VM) Done() <-chan struct{} { return vm.hv.Done() }

// ExitError says why the hypervisor exited; valid after Done.
func (vm *VM) ExitError() error { return vm.hv.ExitError() }

// PID is the hypervisor's process id.
func (vm *VM) PID() int { return vm.hv.PID() }

// ConsolePath is the guest console log.
func (vm *VM) ConsolePath() string { return vm.hv.ConsolePath() }

// validID refuses ids that could escape the state directories.
func validID(id string) error {
	if id == "" || len(id) > 64 || strings.ContainsAny(id, "/\\\x00") || id == "." || id == ".." {
		return fmt.Errorf("sandbox id %q: must be 1-64 characters without path separators", id)
	}
	return nil
}

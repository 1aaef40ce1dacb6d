package virtcontainers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/mount"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/agent/client"
	"github.com/kasa-runtime/kasa/configuration"
	"github.com/kasa-runtime/kasa/hypervisor"
	"github.com/kasa-runtime/kasa/virtcontainers/debugconsole"
	"github.com/kasa-runtime/kasa/virtcontainers/fsshare"
	"github.com/kasa-runtime/kasa/virtcontainers/guestlog"
	"github.com/kasa-runtime/kasa/virtcontainers/podcgroup"
	"github.com/kasa-runtime/kasa/virtcontainers/portforward"
	"github.com/kasa-runtime/kasa/virtcontainers/vmmuser"
)

// cgroupDeleteWait is how long the pod cgroup's removal waits for the
// sandbox's processes, killed and waited for, to have left it.
const cgroupDeleteWait = 5 * time.Second

// guestLogDrain is how long stopping a sandbox waits for the rest of the
// guest's log once the VM is gone.
const guestLogDrain = time.Second

// SandboxConfig describes a sandbox to create.
type SandboxConfig struct {
	ID string
	// Config is the runtime configuration, annotation overrides applied.
	Config   *configuration.Config
	Hostname string
	DNS      []string
	// NetNS is the pod's network namespace (the OCI spec's network
	// namespace path); its veths are joined to the VM's NICs. "" for none.
	NetNS string
	// CgroupsPath is the sandbox container's OCI cgroupsPath: the VM and
	// its daemons are placed there (podcgroup.PathFor; "" for /kasa/<id>).
	CgroupsPath string
	// Boot, if set, records the start's steps (for metrics).
	Boot *BootRecord
	// AgentObserver, if set, is told of every RPC to the agent.
	AgentObserver client.Observer
	// PremountedRootfs says the container manager mounts the root
	// filesystems itself and hands the shim mounted overlays (CRI-O)
	// instead of the mounts to make (containerd). An overlay mount cannot
	// be idmapped, so virtio_fs_userns = "auto" runs virtiofsd as root then.
	PremountedRootfs bool
}

// Sandbox is one VM with its shared directory and the containers in it.
type Sandbox struct {
	ID    string
	vm    *VM
	agent agent
	share *fsshare.Share

	// shared is false with shared_fs = "none": no container can get a rootfs.
	shared    bool
	virtiofsd *fsshare.Daemon
	network   *podNetwork
	// portForward answers containerd's PortForward dials in the pod's
	// netns; nil without a netns or a vsock transport.
	portForward *portforward.Forwarder
	// guestLog copies the guest's log to the shim's; nil with virtio-serial.
	guestLog *guestlog.Forwarder
	// console is the debug console's host socket; nil unless enabled.
	console *debugconsole.Bridge
	// cgroup holds the VM, virtiofsd and, with sandbox_cgroup_only, the
	// shim, which leaves it for shimOrigins at Stop.
	cgroup      *podcgroup.Group
	shimOrigins map[string]string
	// disableGuestSeccomp drops the containers' seccomp profiles.
	disableGuestSeccomp bool

	mu         sync.Mutex
	containers map[string]struct{}
	state      *sandboxState
	// stopped is set once Stop began: the VM, the share and the persisted
	// state are going or gone, and containers are only forgotten.
	stopped bool
	// stopMu serialises Stops (the sandbox container's exit, its Delete,
	// a Shutdown may each ask).
	stopMu sync.Mutex
}

// shareWithGuest sets up the configured shared-directory transport: the
// VM device, the guest mount and, for virtio-fs, the virtiofsd serving it.
func shareWithGuest(ctx context.Context, sc SandboxConfig, share *fsshare.Share, cg *podcgroup.Group) (*hypervisor.SharedFS, []*api.Storage, *fsshare.Daemon, error) {
	switch h := sc.Config.Hypervisor; h.SharedFS {
	case configuration.SharedFSNone:
		return nil, nil, nil, nil
	case configuration.SharedFSVirtioFS:
		sock := filepath.Join(stateDir(sc.ID), "virtiofsd.sock")
		idFirst, err := virtiofsdIDs(ctx, sc.ID, h, sc.PremountedRootfs)
		if err != nil {
			return nil, nil, nil, err
		}
		d, conn, err := share.StartVirtioFSD(ctx, h.VirtioFSDaemon, sock, idFirst, cg.Add)
		if err != nil { // CreateSandbox releases the ids once virtiofsd has left the pod cgroup
			return nil, nil, nil, fmt.Errorf("sandbox %s: hypervisor.qemu.shared_fs = virtio-fs: %w", sc.ID, err)
		}
		return &hypervisor.SharedFS{Type: hypervisor.SharedFSVirtioFS, Tag: fsshare.MountTag, SocketPath: sock, Conn: conn},
			[]*api.Storage{share.GuestStorageVirtioFS()}, d, nil
	default:
		return &hypervisor.SharedFS{Type: hypervisor.SharedFS9P, Tag: fsshare.MountTag, HostPath: share.HostDir},
			[]*api.Storage{share.GuestStorage()}, nil, nil
	}
}

// CreateSandbox boots the sandbox's VM, shares its directory with the guest
// and prepares the guest (hostname, DNS, the shared mount). On error every
// step already taken is undone.
func CreateSandbox(ctx context.Context, sc SandboxConfig) (_ *Sandbox, retErr error) {
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("sandbox", sc.ID))
	if err := validID(sc.ID); err != nil {
		return nil, fmt.Errorf("%w: %v", errdefs.ErrInvalidArgument, err)
	}
	// Every error names the sandbox and the step that failed; the boot
	// record (metrics) times the steps.
	boot := sc.Boot
	var undo cleanup
	var step string
	begin := func(s BootStep, what string) { boot.begin(s); step = what }
	defer func() {
		if retErr != nil {
			undo.run(ctx)
			if step != "" {
				retErr = fmt.Errorf("sandbox %s: %s: %w", sc.ID, step, retErr)
			}
		}
	}()
	ctx = withBootRecord(ctx, boot)
	if sc.AgentObserver != nil {
		ctx = client.WithObserver(ctx, sc.AgentObserver)
	}

	begin(StepSharedDir, "shared directory")
	share, err := fsshare.New(sc.ID, uint32(sc.Config.Hypervisor.MSize9P))
	if err != nil {
		return nil, err
	}
	undo.add("remove shared directory", share.Destroy)
	// Undone after the pod cgroup, which waits for virtiofsd to be gone.
	undo.add("release virtiofsd's ids", func() error { return vmmuser.ReleaseRange(vmmuser.LookupRange(sc.ID), sc.ID) })

	st := &sandboxState{ID: sc.ID, Hypervisor: string(sc.Config.HypervisorName), SharedDir: share.HostDir, CreatedAt: time.Now().UTC(),
		OwnerPID: os.Getpid(), OwnerStart: procStartTime(os.Getpid()), OwnerPIDNS: pidNamespace()}
	st.VMStateDir = VMConfigFor(sc.ID, sc.Config).StateDir
	// Persist before the VM exists, so a crash during boot is cleanable too.
	begin(StepState, "save state")
	if err := saveState(st); err != nil {
		return nil, err
	}
	undo.add("remove sandbox state", func() error { return removeState(sc.ID) })

	// The pod's cgroup first: with sandbox_cgroup_only the shim joins it
	// and everything it starts from here on is born in it.
	begin(StepCgroup, "pod cgroup")
	cgPath, err := podcgroup.PathFor(sc.CgroupsPath, sc.ID)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errdefs.ErrInvalidArgument, err)
	}
	cg, err := podcgroup.Create(cgPath)
	if err != nil {
		return nil, err
	}
	st.Cgroup = cgPath
	undo.add("remove pod cgroup", func() error { return cg.DeleteWithin(cgroupDeleteWait) })
	var shimOrigins map[string]string
	if sc.Config.Runtime.SandboxCgroupOnly {
		step = "move the shim into the pod cgroup (runtime.sandbox_cgroup_only)"
		if shimOrigins, err = podcgroup.Origins(os.Getpid()); err != nil {
			return nil, err
		}
		if err := cg.Add(os.Getpid()); err != nil {
			return nil, err
		}
		undo.add("move the shim out of the pod cgroup", func() error { return cg.Leave(os.Getpid(), shimOrigins) })
	}

	begin(StepSharedFS, "share the root filesystems ("+string(sc.Config.Hypervisor.SharedFS)+")")
	vmShare, storages, daemon, err := shareWithGuest(ctx, sc, share, cg)
	if err != nil {
		return nil, err
	}
	undo.add("stop virtiofsd", daemon.Stop)
	if vmShare != nil && vmShare.Conn != nil {
		defer vmShare.Conn.Close() // QEMU has its own copy once started
	}
	begin(StepNetwork, "attach the pod network")
	pn, err := attachPodNetwork(sc.NetNS, sc.Config.Runtime.InterNetworkingModel)
	if err != nil {
		return nil, err
	}
	undo.add("detach pod network", pn.detach)
	st.NetNS = sc.NetNS
	for _, t := range pn.taps {
		ts := tapState{Name: t.Name, Kind: t.Kind, Index: t.IfIndex(), VethIndex: t.VethIndex()}
		if t.VethMAC != nil {
			ts.VethMAC = t.VethMAC.String()
		}
		st.Taps = append(st.Taps, ts)
	}
	step = "" // startVM's errors name the sandbox and the step
	vm, err := startVM(ctx, sc.ID, sc.Config, vmShare, pn.nics(), cg.ProcsFiles())
	if err != nil {
		if derr := daemon.ExitError(); derr != nil {
			err = fmt.Errorf("%w (%v)", err, derr)
		}
		return nil, err
	}
	undo.add("stop VM", func() error { return vm.Stop(context.WithoutCancel(ctx)) })
	// Registered after the VM's undo, so it runs first, and reads what the
	// guest says until the VM is gone.
	guestLog := startGuestLog(ctx, vm)
	undo.add("stop guest log", func() error { guestLog.Stop(guestLogDrain); return nil })
	st.HypervisorPID = vm.PID()
	begin(StepState, "save state")
	if err := saveState(st); err != nil {
		return nil, err
	}

	s := &Sandbox{ID: sc.ID, vm: vm, agent: vm.Agent, share: share, shared: vmShare != nil, virtiofsd: daemon,
		network: pn, guestLog: guestLog, cgroup: cg, shimOrigins: shimOrigins, disableGuestSeccomp: sc.Config.Runtime.DisableGuestSeccomp,
		containers: map[string]struct{}{}, state: st}
	begin(StepGuestNetwork, "configure the guest network")
	if err := pn.configureGuest(ctx, s.agent); err != nil {
		return nil, err
	}
	begin(StepGuestSandbox, "prepare the guest")
	err = s.agent.CreateSandbox(ctx, &api.CreateSandboxRequest{
		SandboxId:     sc.ID,
		Hostname:      sc.Hostname,
		Dns:           sc.DNS,
		Storages:      storages,
		KernelModules: kernelModules(sc.Config.Agent.KernelModules),
	})
	if err != nil {
		return nil, err
	}
	if sc.Config.Agent.DebugConsoleEnabled {
		step = "debug console (agent.kata.debug_console_enabled)"
		if s.console, err = startDebugConsole(ctx, sc.ID, sc.Config, vm); err != nil {
			return nil, err
		}
		undo.add("close debug console", s.console.Close)
	}
	boot.begin(StepPortForward)
	s.portForward = startPortForward(ctx, sc, vm, st)
	boot.finish()
	return s, nil
}

// startPortForward starts the pod's port forwarding (virtcontainers/
// portforward) when the pod has a netns and the agent is on vsock. It is
// not essential to the pod: a failure is logged, and the pod runs without.
func startPortForward(ctx context.Context, sc SandboxConfig, vm *VM, st *sandboxState) *portforward.Forwarder {
	if sc.NetNS == "" {
		return nil
	}
	if vm.Config.AgentTransport == hypervisor.TransportVirtioSerial {
		log.G(ctx).Info("port forwarding needs a vsock agent transport; this pod has virtio-serial")
		return nil
	}
	f, err := portforward.Start(ctx, portforward.Config{
		NetNS: sc.NetNS,
		Dial:  guestPortDialer(vm, api.PortForwardVsockPort),
	})
	if err != nil {
		log.G(ctx).WithError(err).Warn("port forwarding unavailable for this pod")
		return nil
	}
	st.PortForwardPort = f.Port()
	if err := saveState(st); err != nil {
		log.G(ctx).WithError(err).Warn("persisting sandbox state")
	}
	log.G(ctx).WithField("port", f.Port()).WithField("ipv6", f.IPv6()).Debug("port forwarding ready")
	return f
}

// ContainerConfig describes a container to create in a sandbox.
type ContainerConfig struct {
	ID string
	// Spec is the bundle's OCI spec, as the host sees it.
	Spec *OCISpec
	// Rootfs are containerd's snapshot mounts; empty means BundleRootfs as is.
	Rootfs       []mount.Mount
	BundleRootfs string
	Terminal     bool
	Stdin        bool
	// PodSandbox marks the pod's sandbox container: the agent runs its own
	// pause in it, so neither its root filesystem nor its volumes are shared.
	PodSandbox bool
}

// CreateContainer shares the container's root filesystem and volumes with
// the guest and creates it there. Its init process is not started.
func (s *Sandbox) CreateContainer(ctx context.Context, cc ContainerConfig) (retErr error) {
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("sandbox", s.ID).WithField("container", cc.ID))
	if err := validID(cc.ID); err != nil {
		return fmt.Errorf("%w: container %v", errdefs.ErrInvalidArgument, err)
	}
	if !s.shared && !cc.PodSandbox {
		return fmt.Errorf("container %s: hypervisor.qemu.shared_fs = \"none\" gives the guest no way to reach its root filesystem: %w", cc.ID, errdefs.ErrFailedPrecondition)
	}
	s.mu.Lock()
	if _, ok := s.containers[cc.ID]; ok {
		s.mu.Unlock()
		return fmt.Errorf("container %s: %w", cc.ID, errdefs.ErrAlreadyExists)
	}
	s.containers[cc.ID] = struct{}{}
	s.mu.Unlock()

	var undo cleanup
	undo.add("forget container", func() error {
		s.mu.Lock()
		delete(s.containers, cc.ID)
		s.mu.Unlock()
		return nil
	})
	defer func() {
		if retErr != nil {
			undo.run(ctx)
		}
	}()

	var gs *specs.Spec
	var sandboxNS []string
	var err error
	if cc.PodSandbox {
		gs, err = podSandboxSpec(cc.Spec)
	} else {
		gs, sandboxNS, err = s.shareContainer(ctx, cc, &undo)
	}
	if err != nil {
		return err
	}
	specJSON, err := marshalSpec(gs)
	if err != nil {
		return err
	}
	if err := s.agent.CreateContainer(ctx, &api.CreateContainerRequest{
		ContainerId: cc.ID, ExecId: cc.ID, OciSpecJson: specJSON, Terminal: cc.Terminal, Stdin: cc.Stdin,
		SandboxContainer: cc.PodSandbox, SandboxNamespaces: sandboxNS,
	}); err != nil {
		return fmt.Errorf("container %s: %w", cc.ID, err)
	}
	s.persistContainers()
	return nil
}

// shareContainer shares a workload container's root filesystem and
// volumes with the guest and returns its guest spec.
func (s *Sandbox) shareContainer(ctx context.Context, cc ContainerConfig, undo *cleanup) (*specs.Spec, []string, error) {
	// What cannot be done is refused before anything is mounted, the
	// mount that asks for it first (CRI's Bidirectional sets both).
	binds := map[int]fsshare.Volume{}
	for _, i := range sharedVolumes(cc.Spec) {
		v, err := volumeFor(cc.Spec.Mounts[i])
		if err != nil {
			return nil, nil, fmt.Errorf("container %s: %w: %v", cc.ID, errdefs.ErrInvalidArgument, err)
		}
		binds[i] = v
	}
	if err := checkRootfsPropagation(cc.Spec); err != nil {
		return nil, nil, fmt.Errorf("container %s: %w: %v", cc.ID, errdefs.ErrInvalidArgument, err)
	}
	rootfs, err := s.share.MountRootfs(cc.ID, cc.Rootfs, cc.BundleRootfs)
	if err != nil {
		return nil, nil, err
	}
	undo.add("unshare container files", func() error { return s.share.RemoveContainer(cc.ID) })
	volumes := map[int]fsshare.Bound{}
	for i, v := range binds {
		m := cc.Spec.Mounts[i]
		g, err := s.share.BindVolume(cc.ID, i, v)
		if err != nil {
			return nil, nil, fmt.Errorf("container %s: volume %s: %w", cc.ID, m.Destination, err)
		}
		if g.SubmountsOmitted {
			log.G(ctx).WithField("container", cc.ID).Warnf("volume %s: more than %d mounts below its source %s: "+
				"in the guest they take the volume's own flags (read-only under ro), not their own", m.Destination, fsshare.MaxSubmounts, m.Source)
		}
		volumes[i] = g
	}
	gs, sandboxNS, err := guestSpec(cc.Spec, rootfs, volumes)
	if err != nil {
		return nil, nil, fmt.Errorf("container %s: %w: %v", cc.ID, errdefs.ErrInvalidArgument, err)
	}
	if s.disableGuestSeccomp {
		gs.Linux.Seccomp = nil // [runtime] disable_guest_seccomp
	}
	return gs, sandboxNS, nil
}

// RemoveContainer removes a container from the guest and unshares its files.
func (s *Sandbox) RemoveContainer(ctx context.Context, id string) error {
	s.mu.Lock()
	_, ok := s.containers[id]
	if ok && s.stopped {
		// Stop took the VM, the share and the state with it.
		delete(s.containers, id)
	}
	stopped := s.stopped
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("container %s: %w", id, errdefs.ErrNotFound)
	}
	if stopped {
		return nil
	}
	var errs []error
	if err := s.agent.RemoveContainer(ctx, id, 10); err != nil && !errdefs.IsNotFound(err) && !s.vmGone() {
		errs = append(errs, err)
	}
	if err := s.share.RemoveContainer(id); err != nil {
		errs = append(errs, err)
	}
	s.mu.Lock()
	delete(s.containers, id)
	s.mu.Unlock()
	s.persistContainers()
	return errors.Join(errs...)
}

// Containers lists the ids of the sandbox's containers.
func (s *Sandbox) Containers() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.containers))
	for id := range s.containers {
		out = append(out, id)
	}
	return out
}

func (s *Sandbox) persistContainers() {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock() // its state is removed: writing it would bring it back
		return
	}
	s.state.Containers = s.state.Containers[:0]
	for id := range s.containers {
		s.state.Containers = append(s.state.Containers, id)
	}
	st := *s.state
	s.mu.Unlock()
	if err := saveState(&st); err != nil {
		log.L.WithError(err).WithField("sandbox", s.ID).Warn("persisting sandbox state")
	}
}

func (s *Sandbox) vmGone() bool {
	select {
	case <-s.vm.Done():
		return true
	default:
		return false
	}
}

// Done is closed when the sandbox's VM has exited, for whatever reason.
func (s *Sandbox) Done() <-chan struct{} { return s.vm.Done() }

// ExitReason says why the VM exited; valid after Done.
func (s *Sandbox) ExitReason() string { return exitReason(s.vm.ExitError()) }

// PID is the hypervisor's process id.
func (s *Sandbox) PID() int { return s.vm.PID() }

// Stop powers the VM off and removes everything the sandbox made: the VM's
// state, the shared directory's mounts and the persisted state. Idempotent.
func (s *Sandbox) Stop(ctx context.Context) error {
	s.stopMu.Lock()
	defer s.stopMu.Unlock()
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
	var errs []error
	// First, so that no forwarded connection or console session outlives
	// the VM's agent.
	if err := s.portForward.Stop(); err != nil {
		errs = append(errs, err)
	}
	if err := s.console.Close(); err != nil {
		errs = append(errs, err)
	}
	if err := s.vm.Stop(ctx); err != nil {
		errs = append(errs, err)
	}
	// After the VM: its last words (a panic, the power-off) are logged.
	s.guestLog.Stop(guestLogDrain)
	if err := s.virtiofsd.Stop(); err != nil {
		errs = append(errs, err)
	}
	if err := s.network.detach(); err != nil {
		errs = append(errs, err)
	}
	if err := s.share.Destroy(); err != nil {
		errs = append(errs, err)
	}
	if s.shimOrigins != nil {
		if err := s.cgroup.Leave(os.Getpid(), s.shimOrigins); err != nil {
			errs = append(errs, err)
		}
	}
	if err := s.cgroup.DeleteWithin(cgroupDeleteWait); err != nil {
		errs = append(errs, err)
	} else if err := vmmuser.ReleaseRange(vmmuser.LookupRange(s.ID), s.ID); err != nil {
		errs = append(errs, err) // only once virtiofsd has left the cgroup
	}
	if len(errs) == 0 {
		if err := removeState(s.ID); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// kernelModules turns [agent.kata] kernel_modules entries, "name
// param=value ...", into the agent's request; Validate has checked them.
func kernelModules(entries []string) []*api.KernelModule {
	var out []*api.KernelModule
	for _, e := range entries {
		if f := strings.Fields(e); len(f) > 0 {
			out = append(out, &api.KernelModule{Name: f[0], Parameters: f[1:]})
		}
	}
	return out
}

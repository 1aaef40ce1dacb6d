package container

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/log"
	_ "github.com/opencontainers/cgroups/devices" // device rules (cgroup2 eBPF), as runc's main imports it
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/agent/api"
)

// Spawner starts child processes with reaping suspended and hands the exit
// status of the one it is told about to exited (pid1.Reaper).
type Spawner interface {
	Spawn(start func() (pid int, err error), exited func(unix.WaitStatus, time.Time)) error
}

// StorageMounter mounts a container's storages in order; release unmounts
// them (sandbox.Mounts).
type StorageMounter interface {
	Mount(ctx context.Context, storages []*api.Storage) (release func() error, err error)
}

// Config places the manager in the guest.
type Config struct {
	// StateRoot holds libcontainer's per-container state.
	StateRoot string
	// CgroupParent is the cgroup, relative to CgroupRoot, under which every
	// container gets one named after its id.
	CgroupParent string
	// CgroupRoot is where cgroup2 is mounted.
	CgroupRoot string
	// ProcRoot and SysRoot are where proc and sysfs are mounted.
	ProcRoot, SysRoot string
	Spawner           Spawner
	Storages          StorageMounter
	// PauseBinary is the pause program of sandbox containers; PauseRoot the
	// empty directory they get as root.
	PauseBinary, PauseRoot string
}

// DefaultConfig is the guest's layout; Spawner and Storages are left unset.
func DefaultConfig() Config {
	return Config{
		StateRoot: "/run/kasa/containers", CgroupParent: "/kasa", CgroupRoot: "/sys/fs/cgroup",
		ProcRoot: "/proc", SysRoot: "/sys",
		PauseBinary: "/kasa/bin/pause", PauseRoot: "/run/kasa/pause-root",
	}
}

// Manager holds the sandbox's containers.
type Manager struct {
	cfg Config
	oom *oomQueue

	mu         sync.Mutex
	containers map[string]*Container
	creating   map[string]bool
	// sharedPidns makes containers join the PID namespace of the first
	// container created (the pod's pause), whose id is pidnsHolder.
	sharedPidns bool
	pidnsHolder string
	// sandboxContainer is the id of the pod's sandbox container, if any.
	sandboxContainer string
}

// NewManager returns an empty manager.
func NewManager(cfg Config) *Manager {
	return &Manager{cfg: cfg, oom: newOOMQueue(), containers: map[string]*Container{}, creating: map[string]bool{}}
}

// ShareSandboxPidns makes every later container join the PID namespace of
// the first one (CreateSandbox.sandbox_pidns).
func (m *Manager) ShareSandboxPidns() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sharedPidns = true
}

// validID reports whether id is 1-128 ASCII letters, digits, '_', '+', '-'
// or '.', and is neither "." nor "..". It is written out rather than a
// regexp because package variables are made in every process that runs this
// binary, and libcontainer runs the agent again for each container and
// exec: compiling the regexp took 40 ms of each such start in a fresh VM
// under TCG.
func validID(id string) bool {
	if id == "" || len(id) > 128 || id == "." || id == ".." {
		return false
	}
	for i := 0; i < len(id); i++ {
		switch c := id[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_', c == '+', c == '-', c == '.':
		default:
			return false
		}
	}
	return true
}

func checkID(what, id string) error {
	if !validID(id) {
		return fmt.Errorf("%s %q: want 1-128 letters, digits, '_', '+', '-' or '.': %w", what, id, errdefs.ErrInvalidArgument)
	}
	return nil
}

// get finds a container.
func (m *Manager) get(id string) (*Container, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if c, ok := m.containers[id]; ok {
		return c, nil
	}
	return nil, fmt.Errorf("container %q: %w", id, errdefs.ErrNotFound)
}

// getProcess finds a process of a container.
func (m *Manager) getProcess(id, execID string) (*Process, error) {
	c, err := m.get(id)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.process(execID)
}

// CreateRequest is what CreateContainer carries.
type CreateRequest struct {
	ID, ExecID      string
	Spec            []byte
	Storages        []*api.Storage
	Terminal, Stdin bool
	// SandboxContainer runs the agent's pause on a root of its own, in
	// place of the spec's root and process (a pod's sandbox container).
	SandboxContainer bool
	// SandboxNamespaces are the namespace types joined from the sandbox
	// container instead of new ones.
	SandboxNamespaces []string
}

// Create mounts the container's storages and creates its init, which waits
// for Start. On error nothing of it is left.
func (m *Manager) Create(ctx context.Context, req CreateRequest) (retErr error) {
	if err := checkID("container id", req.ID); err != nil {
		return err
	}
	if req.ExecID == "" {
		req.ExecID = req.ID
	}
	var spec specs.Spec
	if err := json.Unmarshal(req.Spec, &spec); err != nil {
		return fmt.Errorf("container %s: OCI spec: %v: %w", req.ID, err, errdefs.ErrInvalidArgument)
	}
	if m.cfg.Spawner == nil {
		return fmt.Errorf("agent has no process reaper: %w", errdefs.ErrUnavailable)
	}

	m.mu.Lock()
	if _, ok := m.containers[req.ID]; ok || m.creating[req.ID] {
		m.mu.Unlock()
		return fmt.Errorf("container %q: %w", req.ID, errdefs.ErrAlreadyExists)
	}
	joins, holder, err := m.namespaceJoinsLocked(req)
	if err != nil {
		m.mu.Unlock()
		return fmt.Errorf("container %s: %w", req.ID, err)
	}
	m.creating[req.ID] = true
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.creating, req.ID)
		m.mu.Unlock()
	}()

	ctx = log.WithLogger(ctx, log.G(ctx).WithField("container", req.ID))
	if req.SandboxContainer {
		if err := m.pauseSpec(&spec); err != nil {
			return fmt.Errorf("container %s: %w", req.ID, err)
		}
	}
	c, err := m.create(ctx, req, &spec, joins)
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.containers[req.ID] = c
	if holder {
		m.pidnsHolder = req.ID
	}
	if req.SandboxContainer {
		m.sandboxContainer = req.ID
	}
	m.mu.Unlock()
	return nil
}

// joinable are the namespace types a container may take from the sandbox
// container.
var joinable = map[string]specs.LinuxNamespaceType{
	"ipc": specs.IPCNamespace, "uts": specs.UTSNamespace, "pid": specs.PIDNamespace,
}

// namespaceJoinsLocked resolves the namespaces a new container joins, by
// type: the sandbox container's for req.SandboxNamespaces, and the
// sandbox-wide PID namespace of sandbox_pidns. holder is true when the
// container will be that PID namespace's first member. m.mu is held.
func (m *Manager) namespaceJoinsLocked(req CreateRequest) (joins map[specs.LinuxNamespaceType]string, holder bool, err error) {
	joins = map[specs.LinuxNamespaceType]string{}
	if req.SandboxContainer {
		if len(req.SandboxNamespaces) > 0 {
			return nil, false, fmt.Errorf("the sandbox container cannot join its own namespaces: %w", errdefs.ErrInvalidArgument)
		}
		if id := m.sandboxContainer; id != "" {
			return nil, false, fmt.Errorf("sandbox container %s already exists: %w", id, errdefs.ErrAlreadyExists)
		}
	}
	if len(req.SandboxNamespaces) > 0 {
		sb, ok := m.containers[m.sandboxContainer]
		if !ok {
			return nil, false, fmt.Errorf("it joins the pod's %s namespaces, but the pod has no sandbox container: %w",
				strings.Join(req.SandboxNamespaces, ", "), errdefs.ErrFailedPrecondition)
		}
		if sb.init.hasExited() {
			return nil, false, fmt.Errorf("it joins the pod's namespaces, but sandbox container %s has exited: %w", sb.id, errdefs.ErrFailedPrecondition)
		}
		for _, name := range req.SandboxNamespaces {
			t, ok := joinable[name]
			if !ok {
				return nil, false, fmt.Errorf("sandbox namespace %q: want ipc, uts or pid: %w", name, errdefs.ErrInvalidArgument)
			}
			joins[t] = "/proc/" + strconv.Itoa(sb.init.pid) + "/ns/" + name
		}
	}
	if _, ok := joins[specs.PIDNamespace]; !ok && m.sharedPidns {
		if h, ok := m.containers[m.pidnsHolder]; ok {
			if p := h.pidnsPath(); p != "" {
				joins[specs.PIDNamespace] = p
			}
		} else {
			holder = true
		}
	}
	return joins, holder, nil
}

// pauseSpec turns a sandbox container's spec into the agent's pause: the
// pause binary bind-mounted read-only on an empty root. The rest of the
// spec (namespaces, hostname, user, sysctls, limits) stays.
func (m *Manager) pauseSpec(spec *specs.Spec) error {
	if _, err := os.Stat(m.cfg.PauseBinary); err != nil {
		return fmt.Errorf("the agent's pause binary: %w: %w", err, errdefs.ErrFailedPrecondition)
	}
	if err := os.MkdirAll(m.cfg.PauseRoot, 0o755); err != nil {
		return err
	}
	if spec.Root == nil {
		spec.Root = &specs.Root{}
	}
	spec.Root.Path = m.cfg.PauseRoot
	if spec.Process == nil {
		spec.Process = &specs.Process{}
	}
	spec.Process.Args = []string{"/pause"}
	spec.Process.Cwd = "/"
	spec.Process.Terminal = false
	// Only the kernel file systems: the host's bind mounts (volumes,
	// resolv.conf, shm) mean nothing to pause.
	var mounts []specs.Mount
	for _, mnt := range spec.Mounts {
		if !slices.Contains(mnt.Options, "bind") && !slices.Contains(mnt.Options, "rbind") && mnt.Type != "bind" {
			mounts = append(mounts, mnt)
		}
	}
	spec.Mounts = append(mounts, specs.Mount{Destination: "/pause", Type: "bind", Source: m.cfg.PauseBinary, Options: []string{"bind", "ro", "nosuid", "nodev"}})
	return nil
}

func (m *Manager) create(ctx context.Context, req CreateRequest, spec *specs.Spec, joins map[specs.LinuxNamespaceType]string) (_ *Container, retErr error) {
	var undo []func()
	defer func() {
		if retErr != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()

	cgroupsPath := filepath.Join("/", m.cfg.CgroupParent, req.ID)
	ad, err := adaptSpec(spec, adaptOptions{
		cgroupsPath: cgroupsPath, joins: joins, guestDevice: guestDevice,
		hugetlb: m.hasController("hugetlb"),
	})
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", req.ID, err)
	}
	for _, n := range ad.notes {
		log.G(ctx).Info(n)
	}
	lp, err := libcontainerProcess(spec.Process)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", req.ID, err)
	}
	lp.Init = true

	c := &Container{id: req.ID, state: statusCreated, execs: map[string]*Process{}, cgroupDir: filepath.Join(m.cfg.CgroupRoot, cgroupsPath)}
	if m.cfg.Storages != nil && len(req.Storages) > 0 {
		release, err := m.cfg.Storages.Mount(ctx, req.Storages)
		if err != nil {
			return nil, fmt.Errorf("container %s: %w", req.ID, err)
		}
		c.releaseStorages = release
		undo = append(undo, func() {
			if err := release(); err != nil {
				log.G(ctx).WithError(err).Warn("unmounting storages of a failed container")
			}
		})
	}
	if err := m.applyNetSysctls(ad.netSysctls); err != nil {
		return nil, fmt.Errorf("container %s: %w", req.ID, err)
	}

	config, err := specconv.CreateLibcontainerConfig(&specconv.CreateOpts{CgroupName: req.ID, Spec: spec})
	if err != nil {
		return nil, fmt.Errorf("container %s: OCI spec: %w: %w", req.ID, err, errdefs.ErrInvalidArgument)
	}
	c.lc, err = libcontainer.Create(m.cfg.StateRoot, req.ID, config)
	if err != nil {
		if errors.Is(err, libcontainer.ErrExist) {
			return nil, fmt.Errorf("container %s: state %s exists: %w", req.ID, filepath.Join(m.cfg.StateRoot, req.ID), errdefs.ErrAlreadyExists)
		}
		return nil, fmt.Errorf("container %s: %w", req.ID, err)
	}
	undo = append(undo, func() {
		if err := c.lc.Destroy(); err != nil {
			log.G(ctx).WithError(err).Warn("destroying a failed container")
		}
	})

	c.init = newProcess(req.ExecID, lp, req.Terminal, req.Stdin)
	if err := m.startProcess(c, c.init); err != nil {
		return nil, fmt.Errorf("container %s: %w", req.ID, err)
	}
	undo = append(undo, func() {
		_ = c.lc.Signal(unix.SIGKILL)
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		c.init.wait(wctx)
		c.init.release()
	})
	c.oom, err = watchOOM(c.cgroupDir, func() {
		log.G(ctx).Warn("OOM kill in container")
		m.oom.push(req.ID)
	})
	if err != nil {
		return nil, fmt.Errorf("container %s: watch OOM kills: %w", req.ID, err)
	}
	log.G(ctx).WithField("pid", c.init.pid).Info("container created")
	return c, nil
}

// startProcess starts p in c through libcontainer with reaping suspended,
// so that p's exit status comes to p.
func (m *Manager) startProcess(c *Container, p *Process) error {
	if err := p.prepareIO(); err != nil {
		return err
	}
	err := m.cfg.Spawner.Spawn(func() (int, error) {
		if err := c.lc.Start(p.lp); err != nil {
			return 0, err
		}
		pid, err := p.lp.Pid()
		if err != nil {
			return 0, err
		}
		p.pid = pid
		return pid, nil
	}, p.exit)
	if err != nil {
		p.closeFiles()
		return err
	}
	if err := p.started(); err != nil {
		_ = p.lp.Signal(unix.SIGKILL)
		p.closeFiles()
		return err
	}
	return nil
}

// applyNetSysctls sets net.* sysctls of a spec on the guest, whose network
// is the pod's.
func (m *Manager) applyNetSysctls(sysctls map[string]string) error {
	for k, v := range sysctls {
		path := filepath.Join(m.cfg.ProcRoot, "sys", strings.ReplaceAll(k, ".", "/"))
		if strings.Contains(k, "/") {
			path = filepath.Join(m.cfg.ProcRoot, "sys", k)
		}
		if err := os.WriteFile(path, []byte(v), 0o644); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("sysctl %s: the guest kernel has no such setting: %w", k, errdefs.ErrInvalidArgument)
			}
			return fmt.Errorf("sysctl %s=%s: %w", k, v, err)
		}
	}
	return nil
}

func (m *Manager) hasController(name string) bool {
	b, _ := os.ReadFile(filepath.Join(m.cfg.CgroupRoot, "cgroup.controllers"))
	for _, c := range strings.Fields(string(b)) {
		if c == name {
			return true
		}
	}
	return false
}

// Start runs the init of a created container.
func (m *Manager) Start(ctx context.Context, id string) error {
	if err := m.step(id, statusRunning, "start", func(c *Container) error { return c.lc.Exec() }); err != nil {
		return err
	}
	log.G(ctx).WithField("container", id).Info("container started")
	return nil
}

// Exec starts an additional process in a running container.
func (m *Manager) Exec(ctx context.Context, id, execID string, processJSON []byte, terminal, stdin bool) error {
	if err := checkID("exec id", execID); err != nil {
		return err
	}
	var ps specs.Process
	if err := json.Unmarshal(processJSON, &ps); err != nil {
		return fmt.Errorf("exec %s in container %s: OCI process: %v: %w", execID, id, err, errdefs.ErrInvalidArgument)
	}
	if err := validateProcess(&ps); err != nil {
		return fmt.Errorf("exec %s in container %s: OCI process: %w: %w", execID, id, err, errdefs.ErrInvalidArgument)
	}
	ps.ApparmorProfile, ps.SelinuxLabel = "", ""
	lp, err := libcontainerProcess(&ps)
	if err != nil {
		return fmt.Errorf("exec %s in container %s: %w", execID, id, err)
	}
	c, err := m.get(id)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.execs[execID]; ok || execID == c.init.execID {
		return fmt.Errorf("exec %q in container %s: %w", execID, id, errdefs.ErrAlreadyExists)
	}
	if st := c.status(); st != statusRunning {
		return fmt.Errorf("exec %s: container %s is %s, not running: %w", execID, id, st, errdefs.ErrFailedPrecondition)
	}
	p := newProcess(execID, lp, terminal, stdin)
	if err := m.startProcess(c, p); err != nil {
		return fmt.Errorf("exec %s in container %s: %w", execID, id, err)
	}
	c.execs[execID] = p
	log.G(ctx).WithField("container", id).WithField("exec", execID).WithField("pid", p.pid).Info("process started")
	return nil
}

// Signal sends sig to a process, or to every process of the container.
func (m *Manager) Signal(ctx context.Context, id, execID string, sig unix.Signal, all bool) error {
	if sig < 0 || sig > 64 {
		return fmt.Errorf("signal %d: want 0-64: %w", sig, errdefs.ErrInvalidArgument)
	}
	c, err := m.get(id)
	if err != nil {
		return err
	}
	return c.signal(ctx, execID, sig, all)
}

// Wait blocks until a process exits and returns its exit status.
func (m *Manager) Wait(ctx context.Context, id, execID string) (int, time.Time, error) {
	p, err := m.getProcess(id, execID)
	if err != nil {
		return 0, time.Time{}, err
	}
	return p.wait(ctx)
}

// RemoveProcess forgets an exec'd process that has exited: its exit status,
// its stdio buffers and its terminal. The host calls it once it collected
// the exit (at the Delete of the exec); without it the record would stay
// until the container is removed and grow with every exec.
func (m *Manager) RemoveProcess(ctx context.Context, id, execID string) error {
	c, err := m.get(id)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if execID == "" || execID == c.init.execID {
		return fmt.Errorf("remove process of container %s: the init process goes with its container: %w", id, errdefs.ErrInvalidArgument)
	}
	p, ok := c.execs[execID]
	if !ok || c.remove {
		return fmt.Errorf("container %s has no process %q: %w", id, execID, errdefs.ErrNotFound)
	}
	if !p.hasExited() {
		return fmt.Errorf("process %q of container %s is still running: %w", execID, id, errdefs.ErrFailedPrecondition)
	}
	p.release()
	delete(c.execs, execID)
	log.G(ctx).WithField("container", id).WithField("exec", execID).Debug("process removed")
	return nil
}

// execCount is how many exec'd processes the manager holds, for tests.
func (m *Manager) execCount() int {
	m.mu.Lock()
	cs := make([]*Container, 0, len(m.containers))
	for _, c := range m.containers {
		cs = append(cs, c)
	}
	m.mu.Unlock()
	n := 0
	for _, c := range cs {
		c.mu.Lock()
		n += len(c.execs)
		c.mu.Unlock()
	}
	return n
}

// Processes lists the processes of a container.
func (m *Manager) Processes(ctx context.Context, id string) ([]*api.ProcessInfo, error) {
	c, err := m.get(id)
	if err != nil {
		return nil, err
	}
	return c.processes()
}

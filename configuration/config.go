// Package configuration loads, validates and overrides Kasa's TOML runtime configuration.
package configuration

import (
	"maps"
	"math"
	"runtime"
	"slices"
	"strings"
	"time"
)

// HypervisorName names the [hypervisor.<name>] table of a configuration file.
type HypervisorName string

const (
	HypervisorQEMU HypervisorName = "qemu"
	// HypervisorCLH is Cloud Hypervisor, Kata's other common VMM. Kasa has
	// no driver for it yet, so a [hypervisor.clh] table is refused with a
	// message that says so rather than failing at the first pod start.
	HypervisorCLH HypervisorName = "clh"
)

// MachineType is QEMU's machine model.
type MachineType string

const (
	MachineQ35     MachineType = "q35"
	MachinePC      MachineType = "pc"
	MachineMicroVM MachineType = "microvm"
)

// SharedFS is how the sandbox's shared directory reaches the guest.
type SharedFS string

const (
	SharedFS9P       SharedFS = "virtio-9p"
	SharedFSVirtioFS SharedFS = "virtio-fs"
	SharedFSNone     SharedFS = "none"
)

// Accelerator is how the guest's CPUs are run.
type Accelerator string

const (
	// AccelAuto uses KVM when the host can really run a guest with it, else TCG.
	AccelAuto Accelerator = "auto"
	AccelKVM  Accelerator = "kvm"
	AccelTCG  Accelerator = "tcg"
)

// AgentTransport is the channel that carries the agent's ttrpc.
type AgentTransport string

const (
	// TransportAuto picks vsock when /dev/vhost-vsock can be opened, else
	// vhost-user-vsock (QEMU) or hybrid vsock (Cloud Hypervisor); see
	// virtcontainers.SelectTransport.
	TransportAuto           AgentTransport = "auto"
	TransportVsock          AgentTransport = "vsock"
	TransportVhostUserVsock AgentTransport = "vhost-user-vsock"
	TransportVirtioSerial   AgentTransport = "virtio-serial"
)

// VirtioFSUsernsMode says when virtiofsd runs without root.
type VirtioFSUsernsMode string

const (
	VirtioFSUsernsAuto VirtioFSUsernsMode = "auto"
	VirtioFSUsernsOn   VirtioFSUsernsMode = "on"
	VirtioFSUsernsOff  VirtioFSUsernsMode = "off"
)

// InterNetworkingModel is how the VM's NIC is joined to the pod's veth.
type InterNetworkingModel string

const (
	NetTCFilter InterNetworkingModel = "tcfilter"
	NetMacvtap  InterNetworkingModel = "macvtap"
	NetNone     InterNetworkingModel = "none"
)

// Allowed values, in the order error messages list them.
var (
	hypervisorNames       = []HypervisorName{HypervisorQEMU}
	machineTypes          = []MachineType{MachineQ35, MachinePC, MachineMicroVM}
	qemuSharedFS          = []SharedFS{SharedFS9P, SharedFSVirtioFS, SharedFSNone}
	accelerators          = []Accelerator{AccelAuto, AccelKVM, AccelTCG}
	qemuTransports        = []AgentTransport{TransportAuto, TransportVsock, TransportVhostUserVsock, TransportVirtioSerial}
	interNetworkingModels = []InterNetworkingModel{NetTCFilter, NetMacvtap, NetNone}
	virtioFSUsernsModes   = []VirtioFSUsernsMode{VirtioFSUsernsAuto, VirtioFSUsernsOn, VirtioFSUsernsOff}
)

// Config is one runtime configuration: a decoded file, or the embedded
// defaults. A *Config returned by this package has been validated; callers
// that modify one should call Validate again.
type Config struct {
	// HypervisorName is the name of the file's one [hypervisor.<name>] table.
	HypervisorName HypervisorName
	Hypervisor     HypervisorConfig
	Agent          AgentConfig
	Runtime        RuntimeConfig
	Factory        FactoryConfig
	// Path is the file the configuration came from, "" for the embedded defaults.
	Path string
	// DropIns are the config.d files merged over Path, in order.
	DropIns []string `json:",omitempty"`
	// Origins maps each dotted key a file set to the last file that set
	// it; see Settings.
	Origins map[string]string `json:"-"`
}

// HypervisorConfig is the [hypervisor.<name>] table.
type HypervisorConfig struct {
	// Path is the hypervisor binary.
	Path string `toml:"path"`
	// Kernel and Initrd are the guest boot artefacts.
	Kernel string `toml:"kernel"`
	Initrd string `toml:"initrd"`
	// Image, instead of Initrd, is the guest's root as an ext4 image the
	// guest maps read-only with DAX (an NVDIMM; q35 or pc). A file that
	// names one of image and initrd replaces the other's earlier value.
	Image string `toml:"image"`
	// MachineType is the QEMU machine model (QEMU only).
	MachineType MachineType `toml:"machine_type"`
	// Firmware replaces the machine's default firmware; "" keeps it (QEMU only).
	Firmware string `toml:"firmware"`
	// KernelParams are space separated and appended after the driver's own
	// parameters; see KernelParamsList.
	KernelParams string `toml:"kernel_params"`
	// DefaultVCPUs is the number of vCPUs a sandbox boots with.
	DefaultVCPUs int `toml:"default_vcpus"`
	// DefaultMaxVCPUs caps vCPU hotplug; 0 means the number of host CPUs
	// (QEMU only). See MaxVCPUs.
	DefaultMaxVCPUs int `toml:"default_maxvcpus"`
	// DefaultMemory is the boot memory in MiB.
	DefaultMemory int `toml:"default_memory"`
	// SharedFS is the shared-directory transport.
	SharedFS SharedFS `toml:"shared_fs"`
	// VirtioFSDaemon is the virtiofsd binary; required with virtio-fs.
	VirtioFSDaemon string `toml:"virtio_fs_daemon"`
	// MSize9P is the 9p msize in bytes (QEMU only).
	MSize9P int `toml:"msize_9p"`
	// EnableAnnotations are regular expressions; a pod annotation
	// io.katacontainers.config.hypervisor.<key> is honoured only when one of
	// them matches all of <key>.
	EnableAnnotations []string `toml:"enable_annotations"`
	// The Valid*Paths are filepath.Match patterns a path-valued annotation
	// must match. An empty list refuses every override of that key.
	ValidHypervisorPaths     []string `toml:"valid_hypervisor_paths"`
	ValidKernelPaths         []string `toml:"valid_kernel_paths"`
	ValidInitrdPaths         []string `toml:"valid_initrd_paths"`
	ValidVirtioFSDaemonPaths []string `toml:"valid_virtio_fs_daemon_paths"`
	// Accelerator selects KVM or TCG (QEMU only; Kasa-specific key).
	Accelerator Accelerator `toml:"accelerator"`
	// EnableDebug makes the guest kernel and the hypervisor verbose.
	EnableDebug bool `toml:"enable_debug"`
	// Rootless runs the hypervisor as an unprivileged uid/gid of its own,
	// one per sandbox, with no capabilities, in its own network, IPC and
	// UTS namespaces (QEMU only; Kata's key, default true here).
	Rootless bool `toml:"rootless"`
	// VirtioFSUserns, with Rootless, runs virtiofsd without root too: as
	// root of a user namespace of its own whose ids are a host range of
	// its own, serving idmapped mounts (Kasa-specific key). "on" refuses a
	// volume on a filesystem the kernel cannot idmap; "auto" (the default)
	// is "on" where the kernel can idmap tmpfs (Linux 6.3) and runs
	// virtiofsd as root elsewhere; "off" always runs it as root.
	VirtioFSUserns VirtioFSUsernsMode `toml:"virtio_fs_userns"`
	// SeccompSandbox is QEMU's -sandbox value, its own syscall filter; ""
	// turns it off (QEMU only; Kata's key).
	SeccompSandbox string `toml:"seccompsandbox"`
	// ReclaimGuestFreedMemory gives the guest a virtio-balloon device with
	// free page reporting: memory the guest frees goes back to the host
	// (Kata's key; default true here).
	ReclaimGuestFreedMemory bool `toml:"reclaim_guest_freed_memory"`
}

// AgentConfig is the [agent.kata] table.
type AgentConfig struct {
	// DialTimeout bounds how long the shim waits for the agent to answer
	// after boot, in the VM's run time from its admission (time it waited
	// for a host CPU is not counted, up to 4x in wall time). The file holds
	// whole seconds (dial_timeout).
	DialTimeout time.Duration
	// DebugConsoleEnabled makes the agent serve a root shell on a pty on
	// vsock port api.DebugConsoleVsockPort, which the shim exposes on the
	// host for `kasa exec` (needs a vsock transport).
	DebugConsoleEnabled bool
	// KernelModules are loaded in the guest before the workload starts, in
	// Kata's format: "name param=value ...".
	KernelModules []string
	// EnableDebug makes the agent log at debug level and send the guest
	// kernel's log of every level, not only warnings and above, to the
	// shim's log.
	EnableDebug bool
	// Transport is the agent channel (Kasa-specific key).
	Transport AgentTransport
}

// agentFile is [agent.kata] as written in the file, where dial_timeout is
// whole seconds; AgentConfig carries a time.Duration instead.
type agentFile struct {
	DialTimeout         int            `toml:"dial_timeout"`
	DebugConsoleEnabled bool           `toml:"debug_console_enabled"`
	KernelModules       []string       `toml:"kernel_modules"`
	EnableDebug         bool           `toml:"enable_debug"`
	Transport           AgentTransport `toml:"transport"`
}

// RuntimeConfig is the [runtime] table.
type RuntimeConfig struct {
	// EnableDebug makes the shim log at debug level.
	EnableDebug bool `toml:"enable_debug"`
	// InterNetworkingModel joins the VM's NIC to the pod's network.
	InterNetworkingModel InterNetworkingModel `toml:"internetworking_model"`
	// SandboxCgroupOnly puts the shim in the pod's sandbox cgroup too (the
	// hypervisor and its daemons always are).
	SandboxCgroupOnly bool `toml:"sandbox_cgroup_only"`
	// DisableNewNetns keeps the hypervisor in the shim's network namespace
	// instead of an empty one of its own (Confinement.PrivateNamespaces);
	// as in Kata it requires internetworking_model none.
	DisableNewNetns bool `toml:"disable_new_netns"`
	// AllowHostNamespaces lets a pod that asks for the node's network, IPC
	// or PID namespace (hostNetwork, hostIPC, hostPID) start with the VM's
	// own instead; by default such a pod is refused (Kasa's own key).
	AllowHostNamespaces bool `toml:"allow_host_namespaces"`
	// DisableGuestSeccomp drops the containers' OCI seccomp profiles
	// instead of applying them in the guest (Kata's key; Kata defaults to
	// true, Kasa to false: the profile is a protection, turned off only
	// explicitly).
	DisableGuestSeccomp bool `toml:"disable_guest_seccomp"`
	// MaxConcurrentBoots is how many VMs may boot at once on the node,
	// across every shim; the others queue (virtcontainers/admission). 0
	// derives it from the host's CPUs and accelerator (Kasa's own key).
	MaxConcurrentBoots int `toml:"max_concurrent_boots"`
}

// FactoryConfig is the [factory] table: Kata's VM factory, of which Kasa
// implements VM templates (docs/architecture.md, "VM templates").
type FactoryConfig struct {
	// EnableTemplate starts sandboxes from a saved template VM of their
	// configuration instead of booting them; the first sandbox that needs a
	// template makes it.
	EnableTemplate bool `toml:"enable_template"`
	// TemplatePath is the directory that holds the templates, one
	// subdirectory per configuration key.
	TemplatePath string `toml:"template_path"`
}

// TemplatesApply reports whether sandboxes of this configuration can start
// from a VM template, and if not, why: templates need QEMU and a machine
// with a PCI bus for each clone's own devices.
func (c *Config) TemplatesApply() (bool, string) {
	switch {
	case !c.Factory.EnableTemplate:
		return false, "factory.enable_template = false"
	case c.HypervisorName != HypervisorQEMU:
		return false, "VM templates are implemented for QEMU only"
	case c.Hypervisor.MachineType == MachineMicroVM:
		return false, `machine_type "microvm" has no PCI bus for a clone's own devices; use "q35" or "pc"`
	}
	return true, ""
}

// KernelParamsList splits KernelParams into single parameters.
func (h *HypervisorConfig) KernelParamsList() []string {
	return strings.Fields(h.KernelParams)
}

// maxVCPULimit is the largest vCPU count a sandbox may ask for.
const maxVCPULimit = 255

// MaxVCPUs resolves DefaultMaxVCPUs: 0 means the number of host CPUs. The
// result is never below DefaultVCPUs nor above 255.
func (h *HypervisorConfig) MaxVCPUs() int {
	n := h.DefaultMaxVCPUs
	if n == 0 {
		n = runtime.NumCPU()
	}
	return min(max(n, h.DefaultVCPUs), maxVCPULimit)
}

func (a AgentConfig) toFile() agentFile {
	return agentFile{
		DialTimeout:         int(a.DialTimeout / time.Second),
		DebugConsoleEnabled: a.DebugConsoleEnabled,
		KernelModules:       a.KernelModules,
		EnableDebug:         a.EnableDebug,
		Transport:           a.Transport,
	}
}

func (f agentFile) toConfig() AgentConfig {
	// Clamp before multiplying so a huge value stays out of range for
	// Validate instead of wrapping around into range.
	seconds := min(max(f.DialTimeout, math.MinInt64/int(time.Second)), math.MaxInt64/int(time.Second))
	return AgentConfig{
		DialTimeout:         time.Duration(seconds) * time.Second,
		DebugConsoleEnabled: f.DebugConsoleEnabled,
		KernelModules:       f.KernelModules,
		EnableDebug:         f.EnableDebug,
		Transport:           f.Transport,
	}
}

// Clone returns a deep copy of c.
func (c *Config) Clone() *Config {
	out := *c
	h := &out.Hypervisor
	h.EnableAnnotations = slices.Clone(h.EnableAnnotations)
	h.ValidHypervisorPaths = slices.Clone(h.ValidHypervisorPaths)
	h.ValidKernelPaths = slices.Clone(h.ValidKernelPaths)
	h.ValidInitrdPaths = slices.Clone(h.ValidInitrdPaths)
	h.ValidVirtioFSDaemonPaths = slices.Clone(h.ValidVirtioFSDaemonPaths)
	out.Agent.KernelModules = slices.Clone(out.Agent.KernelModules)
	out.DropIns = slices.Clone(out.DropIns)
	out.Origins = maps.Clone(out.Origins)
	return &out
}

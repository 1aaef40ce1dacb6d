// Package hypervisor is the small contract between Kasa's sandbox logic and a
// VM driver (QEMU, Cloud Hypervisor). Drivers live in their own subpackages.
package hypervisor

import (
	"context"
	"errors"
	"net"
	"os"
)

// ErrNotSupported is returned (wrapped) by a driver for an operation or a
// configuration value it cannot honour.
var ErrNotSupported = errors.New("not supported by this hypervisor")

// ErrTransportUnavailable is returned (wrapped) by CreateVM when the host
// cannot provide the configured AgentTransport for this VM (for
// TransportVsock: no usable /dev/vhost-vsock, or no free guest CID).
var ErrTransportUnavailable = errors.New("agent transport unavailable on this host")

// Accelerator is how the guest's CPUs are run.
type Accelerator string

const (
	// AccelAuto picks KVM when the host can really run a guest with it, else TCG.
	AccelAuto Accelerator = "auto"
	AccelKVM  Accelerator = "kvm"
	AccelTCG  Accelerator = "tcg"
)

// AgentTransport is the channel that carries the agent's ttrpc.
type AgentTransport string

const (
	// TransportVirtioSerial carries ttrpc over a virtio-serial port, framed so
	// that a host reconnect cannot corrupt the stream (see agent/serialmux).
	TransportVirtioSerial AgentTransport = "virtio-serial"
	// TransportVsock uses the kernel's vhost-vsock (/dev/vhost-vsock); the
	// driver claims the VM's guest CID on it and releases it with the VM.
	TransportVsock AgentTransport = "vsock"
	// TransportVhostUserVsock uses Kasa's user-space vhost-user-vsock backend.
	TransportVhostUserVsock AgentTransport = "vhost-user-vsock"
)

// VMConfig is everything a driver needs to create one VM. It is a value type:
// the sandbox layer fills it from the configuration and the pod's sizing.
type VMConfig struct {
	// ID names the VM; it is the sandbox id.
	ID string
	// StateDir holds the VM's sockets and console log (/run/kasa/vm/<id>).
	// The driver creates it and removes it when the VM is stopped.
	StateDir string

	// Path is the hypervisor binary.
	Path string
	// Kernel and Initrd are the guest boot artefacts.
	Kernel string
	Initrd string
	// Image, instead of an Initrd, is the guest's root file system as an
	// ext4 image that the guest maps read-only with DAX (QEMU: an NVDIMM)
	// rather than unpacking into its RAM: every VM then runs the same host
	// page-cache pages of it. ImageSize is its size in bytes; the driver
	// fills it in when it is 0.
	Image     string
	ImageSize int64
	// KernelParams are appended after the driver's own parameters.
	KernelParams []string
	// MachineType is the machine model, e.g. "q35", "pc" or "microvm" for QEMU.
	MachineType string
	// Firmware overrides the machine's default firmware (e.g. qboot.rom); "" keeps it.
	Firmware string

	VCPUs     uint32
	MemoryMiB uint32

	Accelerator    Accelerator
	AgentTransport AgentTransport

	// SharedFS is the host directory the guest sees (container root
	// filesystems and volumes); nil for none.
	SharedFS *SharedFS

	// NICs are the guest's network cards, in order (eth0, eth1...).
	NICs []NIC

	// Debug makes the guest kernel verbose on the console.
	Debug bool

	// FreePageReporting gives the guest a virtio-balloon that reports the
	// memory it frees, which the hypervisor then gives back to the host.
	FreePageReporting bool

	// Confinement locks the hypervisor process down; the zero value runs it
	// as the caller (root) without a seccomp filter.
	Confinement Confinement

	// Snapshot, when set, makes this VM a template or a clone of one; a
	// driver that cannot save or restore refuses it with ErrNotSupported.
	Snapshot *Snapshot
}

// SnapshotRole says what a VM does with its Snapshot.
type SnapshotRole string

const (
	// SnapshotTemplate boots the VM with its RAM in Snapshot.Memory, shared,
	// and without the devices that belong to one pod (agent channel, shared
	// filesystem, NICs); Saver.SaveVM then writes its device state to
	// Snapshot.State.
	SnapshotTemplate SnapshotRole = "template"
	// SnapshotClone starts the VM from a template's saved state instead of
	// booting it: its RAM is Snapshot.Memory (the clone's own copy of the
	// template's), its device state is read from Snapshot.State, and the pod's
	// devices sit in the slots the template left empty, for the guest to
	// find.
	SnapshotClone SnapshotRole = "clone"
)

// Snapshot is the memory and device state a template VM saves and its
// clones start from. The files are open: the hypervisor inherits them, so
// an unprivileged one needs no access to the template's directory.
type Snapshot struct {
	Role SnapshotRole
	// Memory is the guest RAM, mapped shared (vhost-user backends map it
	// too). Its size is the VM's memory size.
	Memory *os.File
	// State is the device state: written by a template, read by a clone.
	State *os.File
	// ConsoleInput, for a clone, is written to the guest's console once it
	// runs again with its own devices: the guest's cue that it is a clone
	// (and not the template, which never gets it).
	ConsoleInput []byte
}

// Saver is a driver that can save a template VM (Snapshot.Role
// SnapshotTemplate): SaveVM pauses the guest and writes its device state to
// Snapshot.State; the guest RAM is already in Snapshot.Memory. The VM stays
// paused; StopVM ends it.
type Saver interface {
	SaveVM(ctx context.Context) error
}

// Confinement is how a hypervisor process is locked down. The caller decides
// (from the configuration) and allocates the identity; the driver applies it
// when it launches the process and passes everything the process needs as
// already-open file descriptors, so the process never needs privileges.
type Confinement struct {
	// UID and GID are the unprivileged identity the hypervisor runs as (no
	// capabilities, no supplementary groups but the accelerator device's).
	// Both 0 keep the caller's identity.
	UID, GID uint32
	// Seccomp is the hypervisor's own syscall filter, in QEMU's -sandbox
	// syntax (e.g. "on,obsolete=deny,elevateprivileges=deny,spawn=deny,
	// resourcecontrol=deny"); "" for none.
	Seccomp string
	// PrivateNamespaces gives the process new, empty network, IPC and UTS
	// namespaces: it reaches the pod network only through the tap fds it is
	// handed, and no host network at all.
	PrivateNamespaces bool
	// CgroupProcs are cgroup.procs files (one per hierarchy) the driver
	// writes the hypervisor's pid into the moment it starts, before it
	// touches guest memory, so that the pod's cgroup is charged for the VM.
	CgroupProcs []string
}

// Unprivileged reports whether the hypervisor runs as a non-root identity.
func (c Confinement) Unprivileged() bool { return c.UID != 0 && c.GID != 0 }

// SharedFSType is how a host directory is shared with the guest.
type SharedFSType string

const (
	// SharedFS9P is virtio-9p served by the hypervisor itself.
	SharedFS9P SharedFSType = "virtio-9p"
	// SharedFSVirtioFS is virtio-fs served by a virtiofsd on a vhost-user socket.
	SharedFSVirtioFS SharedFSType = "virtio-fs"
)

// SharedFS is one host directory exported to the guest under a mount tag.
type SharedFS struct {
	Type SharedFSType
	// Tag is the mount tag the guest mounts (mount -t 9p TAG ...).
	Tag string
	// HostPath is the exported directory (virtio-9p).
	HostPath string
	// SocketPath is virtiofsd's vhost-user socket (virtio-fs).
	SocketPath string
	// Conn, when set, is a connection to virtiofsd's socket that the caller
	// already made; the driver hands it to the hypervisor instead of letting
	// it dial SocketPath (which an unprivileged hypervisor may not reach).
	Conn *os.File
}

// NIC is a guest network card backed by a tap device the caller opened.
type NIC struct {
	// TapFile is the open tap queue; the driver hands it to the hypervisor.
	TapFile *os.File
	// MAC is the guest card's address (the pod veth's, in Kata's tcfilter model).
	MAC net.HardwareAddr
}

// Driver is one hypervisor implementation: it makes a Hypervisor per VM,
// and cleans up after a VM whose owner died, from what the owner persisted
// (the VM's StateDir, its id and its Confinement.UID). The sandbox layer
// knows drivers only through this. Nothing reaches a guest without its live
// Hypervisor: the owner (the shim) holds the only agent connection and
// serves the debug console on its own socket, so no process needs to dial
// a guest from persisted state.
type Driver interface {
	New() Hypervisor
	// KillOrphan ends the hypervisor of VM id that a dead owner left
	// running and removes stateDir. A VM that is gone is not an error.
	KillOrphan(stateDir, id string, vmmUID uint32) error
}

// Hypervisor drives one VM through its life. Optional capabilities (saving
// a template: Saver) are separate interfaces a driver may also implement.
type Hypervisor interface {
	// CreateVM validates cfg and prepares the VM without running it.
	CreateVM(ctx context.Context, cfg VMConfig) error
	// StartVM launches the VM as a child of the caller and returns once the
	// hypervisor is up and controllable. On error nothing is left running.
	StartVM(ctx context.Context) error
	// StopVM stops the VM (graceful quit, then kill after the context's
	// deadline or a grace period), reaps it and removes its state directory.
	// It is idempotent.
	StopVM(ctx context.Context) error
	// Done is closed when the hypervisor process has exited.
	Done() <-chan struct{}
	// ExitError says why the process exited (nil for a clean exit); valid after Done.
	ExitError() error
	// DialGuest opens one stream to the guest's vsock port (the agent's,
	// agent/api.AgentVsockPort, or another guest service's), through
	// whichever channel the driver gave the VM. It makes one attempt,
	// bounded by ctx: a guest still booting refuses it, and a caller that
	// waits for the guest retries (agent/client.Connect). A channel without
	// vsock ports (TransportVirtioSerial) carries the agent's port only and
	// refuses others with ErrNotSupported. It is safe to call concurrently
	// with the lifecycle methods, once StartVM has returned.
	DialGuest(ctx context.Context, port uint32) (net.Conn, error)
	// ConsolePath is the file the guest console is written to.
	ConsolePath() string
	// PID is the hypervisor process id (0 before start).
	PID() int
}

package api

// APIVersion is the revision of the kasa.agent.v1 contract this package
// describes. The agent reports it in VersionResponse.ApiVersion and
// GetGuestDetailsResponse.ApiVersion; the host refuses an agent that reports
// a lower revision than the one it needs. Increment it with every additive
// change to agent.proto (a new RPC, field or enum value); a change that is not
// additive needs a new package, kasa.agent.v2, instead.
const APIVersion uint32 = 3

// AgentVsockPort is the guest's AF_VSOCK port the agent serves this API on
// (docs/architecture.md, "Contracts"); a virtio-serial channel carries this
// port only. The other ports are GuestLogVsockPort, PortForwardVsockPort and
// DebugConsoleVsockPort.
const AgentVsockPort = 1024

// Names of the optional guest features an agent may list in
// GetGuestDetailsResponse.Features. The host must treat a missing name as
// "not available" and ignore names it does not know.
const (
	FeatureVsock           = "vsock"             // AF_VSOCK sockets
	FeatureVirtioSerial    = "virtio-serial"     // virtio-console ports
	Feature9P              = "9p"                // 9p over virtio
	FeatureVirtioFS        = "virtio-fs"         // virtio-fs
	FeatureOverlay         = "overlay"           // overlayfs
	FeatureSeccomp         = "seccomp"           // seccomp filters
	FeatureCgroup2         = "cgroup2"           // unified cgroup hierarchy
	FeatureMemHotplugProbe = "mem-hotplug-probe" // /sys/devices/system/memory/probe
)

// Guest paths the host names in the specs it sends.
const (
	// GuestPodShm is the pod's /dev/shm: one tmpfs per sandbox, made by
	// CreateSandbox. The host rewrites a container's /dev/shm bind mount to
	// it, so the pod's containers share POSIX shared memory.
	GuestPodShm = "/run/kasa/sandbox/shm"
	// GuestPodShmSize is its size in bytes (containerd's and Docker's 64 MiB).
	GuestPodShmSize = 64 << 20
)

package hypervisor

// VsockStats are the counters of a vsock device backend that runs in the
// runtime's own process (Kasa's vhost-user-vsock), since the VM started.
type VsockStats struct {
	// BytesFromGuest and BytesToGuest count stream payload.
	BytesFromGuest, BytesToGuest uint64
	// ResetsSent counts streams the backend reset (RST to the guest).
	ResetsSent uint64
	// ConnectionsRefused counts streams refused at the connection limit.
	ConnectionsRefused uint64
	// CreditViolations counts streams reset because the guest overran the
	// buffer space it was given.
	CreditViolations uint64
	// PacketsDropped counts malformed or misaddressed guest packets.
	PacketsDropped uint64
	// Connections is the number of streams open now.
	Connections int
}

// VsockStatser is the optional capability of a driver whose vsock device
// backend runs in the runtime's process. ok is false when the VM has no
// such backend (kernel vhost-vsock, virtio-serial) or its counters cannot
// be read now.
type VsockStatser interface {
	VsockStats() (s VsockStats, ok bool)
}

package qemu

import "github.com/kasa-runtime/kasa/hypervisor"

var _ hypervisor.VsockStatser = (*QEMU)(nil)

// VsockStats returns the vhost-user-vsock backend's counters. It never
// waits: while a lifecycle operation (a stop, say) holds the driver, it
// reports none.
func (q *QEMU) VsockStats() (hypervisor.VsockStats, bool) {
	if !q.mu.TryLock() {
		return hypervisor.VsockStats{}, false
	}
	b := q.vsock
	q.mu.Unlock()
	if b == nil {
		return hypervisor.VsockStats{}, false
	}
	s := b.Stats()
	return hypervisor.VsockStats{
		BytesFromGuest: s.BytesFromGuest, BytesToGuest: s.BytesToGuest, ResetsSent: s.ResetsSent,
		ConnectionsRefused: s.ConnectionsRefused, CreditViolations: s.CreditViolations, PacketsDropped: s.PacketsDropped,
		Connections: s.Connections,
	}, true
}

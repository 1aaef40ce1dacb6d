package qemu

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/kasa-runtime/kasa/agent/serialmux"
	"github.com/kasa-runtime/kasa/hypervisor"
	"github.com/kasa-runtime/kasa/hypervisor/vsock"
)

// VhostVsockDevice is the kernel's vhost-vsock device a TransportVsock VM's
// guest CID is claimed on; a variable for tests.
var VhostVsockDevice = vsock.VhostVsockDevice

// guestChannel is how DialGuest reaches the guest of a created VM: one of
// its fields is set, after the VM's transport.
type guestChannel struct {
	// serial is QEMU's socket of the agent's virtio-serial port.
	serial string
	// hybrid is the vsock backend's hybrid socket (vhost-user-vsock).
	hybrid string
	// cid is the guest CID claimed on /dev/vhost-vsock (kernel vsock).
	cid uint32
}

func channelFor(cfg hypervisor.VMConfig, paths Paths, cid uint32) guestChannel {
	switch cfg.AgentTransport {
	case hypervisor.TransportVhostUserVsock:
		return guestChannel{hybrid: paths.HybridVsock}
	case hypervisor.TransportVsock:
		return guestChannel{cid: cid}
	default:
		return guestChannel{serial: paths.Agent}
	}
}

// DialGuest opens one stream to the guest's vsock port (see
// hypervisor.Hypervisor): through the vsock backend's hybrid socket
// (vhost-user-vsock), the kernel's AF_VSOCK (vsock), or, for the agent's
// port only, QEMU's virtio-serial socket framed by agent/serialmux. It
// never waits for a lifecycle operation.
func (q *QEMU) DialGuest(ctx context.Context, port uint32) (net.Conn, error) {
	ch := q.info.Load().channel
	switch {
	case ch.hybrid != "":
		return vsock.DialHybrid(ctx, ch.hybrid, port)
	case ch.cid != 0:
		return vsock.Dial(ctx, ch.cid, port)
	case ch.serial != "":
		if port != AgentPort {
			return nil, fmt.Errorf("guest port %d: the virtio-serial transport carries the agent's port %d only: %w", port, AgentPort, hypervisor.ErrNotSupported)
		}
		return serialmux.Dial(ctx, ch.serial)
	}
	return nil, errors.New("qemu: no VM to dial: CreateVM has not run")
}

// claimVhostVsock opens the kernel's vhost-vsock device and claims the first
// free guest CID on it, for a VM that needs it (needsVhostVsock). QEMU
// inherits the file; the driver keeps it open while the VM runs, and
// closing it (releaseVhostVsock) releases the CID.
func (q *QEMU) claimVhostVsock(cfg hypervisor.VMConfig) (uint32, error) {
	q.releaseVhostVsock()
	if !needsVhostVsock(cfg) {
		return 0, nil
	}
	f, cid, err := vsock.OpenVhostVsock(VhostVsockDevice, vsock.DefaultGuestCID)
	if err != nil {
		return 0, fmt.Errorf("agent transport %s: %w: %w", cfg.AgentTransport, hypervisor.ErrTransportUnavailable, err)
	}
	q.vhostVsock = f
	return cid, nil
}

// releaseVhostVsock gives the guest CID back, if the driver holds one.
func (q *QEMU) releaseVhostVsock() {
	if q.vhostVsock != nil {
		q.vhostVsock.Close()
		q.vhostVsock = nil
	}
}

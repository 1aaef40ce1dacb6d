package vsock

import "time"

// The guest is untrusted: everything it sends is checked, and nothing it
// can make the backend hold grows with what it sends or with the pod's
// lifetime. The bounds, per VM:
//
//   - streams: at most Config.MaxConnections, both directions together
//     (guest REQUESTs beyond it are answered with RST, host CONNECTs with ERR);
//   - guest → host data: each stream holds at most hostBufAlloc bytes, the
//     buffer it advertises; a guest that sends beyond its credit has the
//     stream reset and what it sent dropped. Stored in chunks that are all
//     full but the last, so a flood of tiny packets costs no more than the
//     bytes it carries;
//   - host → guest data: at most readChunk queued per stream and
//     maxPendingOut across the VM, each packet charged outPacketCost beyond
//     its payload, whatever credit the guest claims to have;
//   - control packets waiting for rx buffers: a live stream has at most one
//     each of REQUEST or RESPONSE, SHUTDOWN and CREDIT_UPDATE queued; RSTs
//     (which outlive their stream) are capped at maxQueuedResets, new ones
//     beyond it dropped and counted;
//   - log lines a guest can provoke are rate-limited.
const (
	// DefaultMaxConnections is Config.MaxConnections when unset. A pod's
	// agent uses a handful of streams (one per RPC connection and one per
	// exec'd process stdio); a thousand leaves room for busy pods while
	// bounding the worst case to MaxConnections × hostBufAlloc of guest
	// data held for host readers that stopped reading.
	DefaultMaxConnections = 1024

	// maxQueuedResets caps the RSTs waiting for the guest's rx buffers.
	// A guest that withholds its buffers while it sends to ports that do
	// not exist would otherwise queue one per packet; beyond the cap an RST
	// is dropped (its guest socket then times out by itself).
	maxQueuedResets = 1024

	// maxPendingOut bounds host → guest data (with outPacketCost per
	// packet) queued for the guest's rx ring or being read for it, across
	// every stream: 64 streams' worth of readChunk.
	maxPendingOut = 4 << 20
	// outPacketCost is what a queued data packet is charged besides its
	// payload, so that a host peer writing a byte at a time cannot queue
	// an unbounded number of packets.
	outPacketCost = 128

	// inboundChunk is the largest chunk guest → host data is kept in.
	inboundChunk = 16 << 10
	// minInboundChunk is the smallest chunk allocated for it.
	minInboundChunk = 2 << 10

	// guestLogInterval is the least time between two log lines of one kind
	// that the guest can provoke.
	guestLogInterval = time.Second
)

// Stats are a backend's counters since Listen.
type Stats struct {
	// Connections is the number of streams open now, in any state.
	Connections int
	// ConnectionsRefused counts streams refused at MaxConnections.
	ConnectionsRefused uint64
	// ResetsSent counts RSTs put in the guest's rx ring.
	ResetsSent uint64
	// CreditViolations counts streams reset because the guest sent more
	// than the buffer space the backend advertised.
	CreditViolations uint64
	// ControlDropped counts control packets (RSTs) dropped because
	// maxQueuedResets were already waiting for the guest's rx buffers.
	ControlDropped uint64
	// PacketsDropped counts guest packets dropped as malformed or
	// misaddressed.
	PacketsDropped uint64
	// BytesFromGuest and BytesToGuest count stream payload accepted from
	// the guest and put in its rx ring.
	BytesFromGuest, BytesToGuest uint64
	// QueuedControl and QueuedDataBytes are what waits for the guest's rx
	// buffers now: control packets, and data bytes (with per-packet
	// overhead and reads in progress).
	QueuedControl   int
	QueuedDataBytes int
}

// Stats returns the backend's counters.
func (b *Backend) Stats() Stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.stats
	s.Connections = len(b.conns)
	s.QueuedControl = b.queuedControl + b.queuedResets
	s.QueuedDataBytes = b.pendingOut
	return s
}

// rateLog rate-limits one kind of log line the guest can provoke.
type rateLog struct {
	last       time.Time
	suppressed int
}

// logGuest logs through l at most once per guestLogInterval, saying how
// many lines were suppressed in between. The caller holds b.mu.
func (b *Backend) logGuest(l *rateLog, format string, args ...any) {
	now := time.Now()
	if !l.last.IsZero() && now.Sub(l.last) < guestLogInterval {
		l.suppressed++
		return
	}
	if l.suppressed > 0 {
		format += " (%d similar suppressed)"
		args = append(args, l.suppressed)
		l.suppressed = 0
	}
	l.last = now
	b.cfg.Logf(format, args...)
}

package vsock

import (
	"errors"
	"net"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

const (
	// hostBufAlloc is the receive buffer each stream advertises to the
	// guest: how much guest data the backend holds before the unix peer
	// reads it.
	hostBufAlloc = 256 << 10
	// creditUpdateThreshold: once this much of that buffer has been freed
	// without the guest hearing of it, a CREDIT_UPDATE is sent. Any value up
	// to hostBufAlloc avoids deadlock; a quarter keeps a fast sender busy.
	creditUpdateThreshold = hostBufAlloc / 4
	// readChunk bounds one read from a unix connection (and so one queued
	// host → guest message; it is split to fit the guest's rx buffers).
	readChunk = 64 << 10
	// firstHostPort is where host ports of host-initiated streams start;
	// well above the ports a guest connects to on the host.
	firstHostPort = 1 << 30
)

type connState int

const (
	connConnecting  connState = iota // REQUEST sent (host-initiated) or dialling the host listener
	connEstablished                  // data flows
	connClosed                       // removed; goroutines are leaving
)

// connKey names a stream: the host's port and the guest's.
type connKey struct{ local, peer uint32 }

// conn is one guest stream and its host unix connection. Fields are
// guarded by the backend's mutex; cond (on that mutex) wakes the stream's
// reader and writer.
type conn struct {
	key           connKey
	state         connState
	hostInitiated bool
	uc            *net.UnixConn
	cond          *sync.Cond
	ready         chan struct{} // host-initiated: closed when the guest answered
	readyClosed   bool

	// host → guest
	peerBufAlloc, peerFwdCnt uint32 // the guest's credit, from its last packet
	txCnt                    uint32 // bytes read from uc and queued for the guest
	queuedOut                int    // of those, not yet in the guest's rx ring
	localShutSend            bool   // uc hit EOF and the guest was told

	// guest → host
	inbound      [][]byte // chunks; all but the last are full
	inboundBytes int      // bytes in inbound
	rxCnt        uint32   // bytes accepted from the guest
	fwdCnt       uint32   // bytes written to uc
	lastFwdSent  uint32   // fwdCnt the guest last heard of
	creditQueued bool     // a CREDIT_UPDATE is waiting in sendq
	peerShut     uint32   // SHUTDOWN flags the guest sent
	writeDone    bool     // the guest shut its sending side and all was written
}

// outPacket is a host → guest packet waiting for an rx buffer.
type outPacket struct {
	c           *conn // nil for an RST answering an unknown stream
	local, peer uint32
	op          uint16
	flags       uint32
	data        []byte
	// orphanRst: an RST for a stream that is gone (or never was), counted
	// in queuedResets rather than queuedControl.
	orphanRst bool
}

func (b *Backend) newConn(local, peer uint32, hostInitiated bool) *conn {
	c := &conn{key: connKey{local, peer}, hostInitiated: hostInitiated, cond: sync.NewCond(&b.mu)}
	b.conns[c.key] = c
	return c
}

// enqueue queues a control packet for the guest and wakes the worker. An
// RST for a stream that is gone is dropped (and counted) when
// maxQueuedResets are already waiting.
func (b *Backend) enqueue(p *outPacket) {
	if p.c != nil {
		p.local, p.peer = p.c.key.local, p.c.key.peer
	}
	if p.op == opRst && (p.c == nil || p.c.state == connClosed) {
		if b.queuedResets >= maxQueuedResets {
			b.stats.ControlDropped++
			return
		}
		p.orphanRst = true
		b.queuedResets++
	} else {
		b.queuedControl++
	}
	b.sendq = append(b.sendq, p)
	b.kick()
}

// enqueueData queues host → guest data of c whose budget was reserved.
func (b *Backend) enqueueData(c *conn, data []byte) {
	c.queuedOut += len(data)
	b.sendq = append(b.sendq, &outPacket{c: c, local: c.key.local, peer: c.key.peer, op: opRW, data: data})
}

// dequeued accounts for p leaving sendq, sent or dropped.
func (b *Backend) dequeued(p *outPacket) {
	switch {
	case p.op == opRW:
		b.releaseOut(len(p.data) + outPacketCost)
	case p.orphanRst:
		b.queuedResets--
	default:
		b.queuedControl--
	}
}

// waitOut waits until c may read host → guest data: the guest has credit,
// c has less than readChunk queued and the VM's budget has room. It
// returns false when c is done reading.
func (b *Backend) waitOut(c *conn) bool {
	for {
		if c.state != connEstablished || c.peerShut&shutdownRcv != 0 {
			return false
		}
		if b.reserveOut(c, false) > 0 {
			return true
		}
		if maxPendingOut-outPacketCost-b.pendingOut <= 0 {
			b.budgetWaiters[c] = struct{}{}
		}
		c.cond.Wait()
	}
}

// reserveOut says how much c may read now, and with take reserves that
// much budget (plus the packet's cost) for the read.
func (b *Backend) reserveOut(c *conn, take bool) int {
	room := maxPendingOut - outPacketCost - b.pendingOut
	if c.state != connEstablished || c.peerShut&shutdownRcv != 0 || c.credit() <= 0 || c.queuedOut >= readChunk || room <= 0 {
		return 0
	}
	n := int(min(c.credit(), readChunk, int64(room)))
	if take {
		b.pendingOut += n + outPacketCost
	}
	return n
}

// releaseOut returns n bytes of host → guest budget and wakes the streams
// that waited for it.
func (b *Backend) releaseOut(n int) {
	b.pendingOut -= n
	for c := range b.budgetWaiters {
		c.cond.Broadcast()
		delete(b.budgetWaiters, c)
	}
}

func (b *Backend) send(c *conn, op uint16, flags uint32) {
	b.enqueue(&outPacket{c: c, op: op, flags: flags})
}

func (b *Backend) queueCreditUpdate(c *conn) {
	if !c.creditQueued {
		c.creditQueued = true
		b.send(c, opCreditUpdate, 0)
	}
}

// credit is how many more bytes the guest can take on c.
func (c *conn) credit() int64 {
	return int64(c.peerBufAlloc) - int64(c.txCnt-c.peerFwdCnt)
}

// resetConn ends c: it is forgotten, its queued packets and buffered data
// dropped, its unix connection closed (a host-initiated stream still in its
// handshake is closed by the handshake instead, after the error line), and
// the guest is sent an RST if rst.
func (b *Backend) resetConn(c *conn, rst bool) {
	if c.state == connClosed {
		return
	}
	wasEstablished := c.state == connEstablished
	c.state = connClosed
	delete(b.conns, c.key)
	delete(b.budgetWaiters, c)
	if c.uc != nil && (wasEstablished || !c.hostInitiated) {
		c.uc.Close()
	}
	q := b.sendq[:0]
	for _, p := range b.sendq {
		if p.c == c && !p.orphanRst {
			b.dequeued(p)
		} else {
			q = append(q, p)
		}
	}
	clear(b.sendq[len(q):])
	b.sendq = q
	c.queuedOut = 0
	c.inbound, c.inboundBytes = nil, 0
	if rst {
		b.send(c, opRst, 0)
	}
	c.cond.Broadcast()
	if c.ready != nil && !c.readyClosed {
		c.readyClosed = true
		close(c.ready)
	}
}

// resetStreams drops every stream without telling the guest: its driver is
// gone or being reset.
func (b *Backend) resetStreams() {
	for _, c := range b.conns {
		b.resetConn(c, false)
	}
	for _, p := range b.sendq {
		b.dequeued(p)
	}
	clear(b.sendq)
	b.sendq = nil
}

// appendInbound stores n bytes of guest data, from byte off of bufs, in
// c's chunks: it fills the last chunk before it starts another, so that
// only the last is ever partly empty.
func (c *conn) appendInbound(bufs [][]byte, off, n int) {
	for n > 0 {
		k := len(c.inbound)
		if k == 0 || len(c.inbound[k-1]) == cap(c.inbound[k-1]) {
			c.inbound = append(c.inbound, make([]byte, 0, min(inboundChunk, max(n, minInboundChunk))))
			k++
		}
		tail := c.inbound[k-1]
		m := min(n, cap(tail)-len(tail))
		gather(tail[len(tail):len(tail)+m], bufs, off)
		c.inbound[k-1] = tail[:len(tail)+m]
		c.inboundBytes += m
		off += m
		n -= m
	}
}

// maybeFinish ends a stream both sides have shut down once everything the
// guest sent has been written out. The RST lets the guest free its socket
// at once instead of after its close timeout.
func (b *Backend) maybeFinish(c *conn) {
	if c.state == connEstablished && c.writeDone && (c.localShutSend || c.peerShut&shutdownRcv != 0) {
		b.resetConn(c, true)
	}
}

// startStream starts the goroutines that move c's data; c is established.
func (b *Backend) startStream(c *conn) {
	b.wg.Add(2)
	go b.readLoop(c)
	go b.writeLoop(c)
}

// readLoop moves host → guest data: it reads from the unix connection only
// as much as the guest has credit for and the VM's budget has room for.
// It waits for the connection to be readable without a buffer and reserves
// the budget only for a read that will not block, so that idle streams
// hold neither memory nor budget.
func (b *Backend) readLoop(c *conn) {
	defer b.wg.Done()
	defer b.recoverPanic()
	rc, err := c.uc.SyscallConn()
	if err != nil {
		b.mu.Lock()
		b.cfg.Logf("vsock backend: stream %d→%d: %v", c.key.local, c.key.peer, err)
		b.resetConn(c, true)
		b.mu.Unlock()
		return
	}
	for {
		b.mu.Lock()
		ok := b.waitOut(c)
		b.mu.Unlock()
		if !ok {
			return
		}

		// Wait until there is something to read, or EOF, holding nothing
		// (the callbacks must not take b.mu: Close waits for them).
		err := rc.Read(func(fd uintptr) bool {
			var one [1]byte
			for {
				_, _, err := unix.Recvfrom(int(fd), one[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
				if !errors.Is(err, unix.EINTR) {
					return !errors.Is(err, unix.EAGAIN)
				}
			}
		})
		n := 0 // budget reserved
		if err == nil {
			b.mu.Lock()
			n = b.reserveOut(c, true)
			b.mu.Unlock()
			if n == 0 {
				continue // the credit or the budget went meanwhile
			}
		}
		var (
			data []byte
			eof  bool
		)
		if err == nil {
			// Only this goroutine reads, so what the peek saw is there.
			rerr := rc.Read(func(fd uintptr) bool {
				data, eof, err = readAvailable(int(fd), n)
				return true
			})
			if err == nil {
				err = rerr
			}
		}

		b.mu.Lock()
		if c.state != connEstablished {
			if n > 0 {
				b.releaseOut(n + outPacketCost)
			}
			b.mu.Unlock()
			return
		}
		if m := len(data); m > 0 {
			b.releaseOut(n - m)
			c.txCnt += uint32(m)
			// Queued without waking the worker: this goroutine delivers it
			// below, a hop less.
			b.enqueueData(c, data)
		} else if n > 0 {
			b.releaseOut(n + outPacketCost)
		}
		switch {
		case eof:
			c.localShutSend = true
			b.send(c, opShutdown, shutdownSend)
			b.maybeFinish(c)
			b.mu.Unlock()
			return
		case err != nil:
			b.cfg.Logf("vsock backend: stream %d→%d: read: %v", c.key.local, c.key.peer, err)
			b.resetConn(c, true)
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		if len(data) > 0 {
			b.process()
		}
	}
}

// readAvailable reads up to n bytes from the non-blocking fd into a buffer
// the size of what is there to read.
func readAvailable(fd, n int) (data []byte, eof bool, err error) {
	size := n
	if avail, err := unix.IoctlGetInt(fd, unix.SIOCINQ); err == nil {
		size = max(1, min(avail, n))
	}
	buf := make([]byte, size)
	for {
		m, err := unix.Read(fd, buf)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return nil, false, nil
		case err != nil:
			return nil, false, err
		case m == 0:
			return nil, true, nil
		}
		return buf[:m], false, nil
	}
}

// writeLoop moves guest → host data to the unix connection and returns the
// credit to the guest as the data leaves.
func (b *Backend) writeLoop(c *conn) {
	defer b.wg.Done()
	defer b.recoverPanic()
	for {
		b.mu.Lock()
		for c.state == connEstablished && len(c.inbound) == 0 && c.peerShut&shutdownSend == 0 {
			c.cond.Wait()
		}
		if c.state != connEstablished {
			b.mu.Unlock()
			return
		}
		if len(c.inbound) == 0 { // the guest shut its side and all is written
			b.mu.Unlock()
			c.uc.CloseWrite()
			b.mu.Lock()
			c.writeDone = true
			b.maybeFinish(c)
			b.mu.Unlock()
			return
		}
		data := c.popInbound()
		b.mu.Unlock()

		n, err := c.uc.Write(data)

		b.mu.Lock()
		b.forwarded(c, n)
		if c.state != connEstablished {
			b.mu.Unlock()
			return
		}
		if err != nil {
			b.cfg.Logf("vsock backend: stream %d→%d: write: %v", c.key.local, c.key.peer, err)
			b.resetConn(c, true)
		}
		b.mu.Unlock()
	}
}

// popInbound takes the oldest chunk of guest data for the host; c.inbound
// is not empty.
func (c *conn) popInbound() []byte {
	data := c.inbound[0]
	c.inbound[0] = nil
	c.inbound = c.inbound[1:]
	c.inboundBytes -= len(data)
	return data
}

// forwarded accounts for n bytes of c written to the host, whose buffer
// space goes back to the guest once enough has gathered.
func (b *Backend) forwarded(c *conn, n int) {
	c.fwdCnt += uint32(n)
	if c.state == connEstablished && c.fwdCnt-c.lastFwdSent >= creditUpdateThreshold {
		b.queueCreditUpdate(c)
	}
}

func swapFD(slot *int, fd int) {
	if *slot >= 0 {
		unix.Close(*slot)
	}
	*slot = fd
}

func newFile(fd int, name string) *os.File { return os.NewFile(uintptr(fd), name) }

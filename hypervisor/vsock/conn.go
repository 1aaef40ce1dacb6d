package vsock

import (
	"errors"
	"io"
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
	inbound      [][]byte
	fwdCnt       uint32 // bytes written to uc
	lastFwdSent  uint32 // fwdCnt the guest last heard of
	creditQueued bool   // a CREDIT_UPDATE is waiting in sendq
	peerShut     uint32 // SHUTDOWN flags the guest sent
	writeDone    bool   // the guest shut its sending side and all was written
}

// outPacket is a host → guest packet waiting for an rx buffer.
type outPacket struct {
	c           *conn // nil for an RST answering an unknown stream
	local, peer uint32
	op          uint16
	flags       uint32
	data        []byte
}

func (b *Backend) newConn(local, peer uint32, hostInitiated bool) *conn {
	c := &conn{key: connKey{local, peer}, hostInitiated: hostInitiated, cond: sync.NewCond(&b.mu)}
	b.conns[c.key] = c
	return c
}

// enqueue queues p for the guest and wakes the worker.
func (b *Backend) enqueue(p *outPacket) {
	if p.c != nil {
		p.local, p.peer = p.c.key.local, p.c.key.peer
	}
	b.sendq = append(b.sendq, p)
	b.kick()
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

// resetConn ends c: it is forgotten, its queued packets dropped, its unix
// connection closed (a host-initiated stream still in its handshake is
// closed by the handshake instead, after the error line), and the guest is
// sent an RST if rst.
func (b *Backend) resetConn(c *conn, rst bool) {
	if c.state == connClosed {
		return
	}
	wasEstablished := c.state == connEstablished
	c.state = connClosed
	delete(b.conns, c.key)
	if c.uc != nil && (wasEstablished || !c.hostInitiated) {
		c.uc.Close()
	}
	q := b.sendq[:0]
	for _, p := range b.sendq {
		if p.c != c {
			q = append(q, p)
		}
	}
	clear(b.sendq[len(q):])
	b.sendq = q
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
	clear(b.sendq)
	b.sendq = nil
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
// as much as the guest has credit for.
func (b *Backend) readLoop(c *conn) {
	defer b.wg.Done()
	defer b.recoverPanic()
	for {
		b.mu.Lock()
		for c.state == connEstablished && c.peerShut&shutdownRcv == 0 && (c.credit() <= 0 || c.queuedOut >= readChunk) {
			c.cond.Wait()
		}
		if c.state != connEstablished || c.peerShut&shutdownRcv != 0 {
			b.mu.Unlock()
			return
		}
		n := min(c.credit(), readChunk)
		b.mu.Unlock()

		buf := make([]byte, n)
		m, err := c.uc.Read(buf)

		b.mu.Lock()
		if c.state != connEstablished {
			b.mu.Unlock()
			return
		}
		if m > 0 {
			c.txCnt += uint32(m)
			c.queuedOut += m
			// Queued without waking the worker: this goroutine delivers it
			// below, a hop less.
			b.sendq = append(b.sendq, &outPacket{c: c, local: c.key.local, peer: c.key.peer, op: opRW, data: buf[:m]})
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				c.localShutSend = true
				b.send(c, opShutdown, shutdownSend)
				b.maybeFinish(c)
			} else {
				b.cfg.Logf("vsock backend: stream %d→%d: read: %v", c.key.local, c.key.peer, err)
				b.resetConn(c, true)
			}
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		b.process()
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
		data := c.inbound[0]
		c.inbound[0] = nil
		c.inbound = c.inbound[1:]
		b.mu.Unlock()

		n, err := c.uc.Write(data)

		b.mu.Lock()
		c.fwdCnt += uint32(n)
		if c.state != connEstablished {
			b.mu.Unlock()
			return
		}
		if err != nil {
			b.cfg.Logf("vsock backend: stream %d→%d: write: %v", c.key.local, c.key.peer, err)
			b.resetConn(c, true)
			b.mu.Unlock()
			return
		}
		if c.fwdCnt-c.lastFwdSent >= creditUpdateThreshold {
			b.queueCreditUpdate(c)
		}
		b.mu.Unlock()
	}
}

func swapFD(slot *int, fd int) {
	if *slot >= 0 {
		unix.Close(*slot)
	}
	*slot = fd
}

func newFile(fd int, name string) *os.File { return os.NewFile(uintptr(fd), name) }

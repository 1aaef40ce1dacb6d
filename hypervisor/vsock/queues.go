package vsock

import (
	"fmt"
	"net"
	"strconv"
)

// maxChainsPerPass bounds one pass over a queue so that neither direction
// starves the other; the worker wakes itself for the rest.
const maxChainsPerPass = 256

// breakRing stops processing a queue the guest corrupted. The guest's
// driver has to reset the device to recover; its streams are gone.
func (b *Backend) breakRing(idx int, err error) {
	vq := &b.vqs[idx]
	vq.broken = fmt.Errorf("queue %d: %w", idx, err)
	b.cfg.Logf("vsock backend: %v", vq.broken)
	if vq.errFD >= 0 {
		var one = [8]byte{1}
		writeFD(vq.errFD, one[:])
	}
	b.resetStreams()
}

// processTX takes the guest's packets off the tx queue.
func (b *Backend) processTX() {
	vq := &b.vqs[txQueue]
	if !vq.ready() {
		return
	}
	used := 0
	defer func() {
		if used > 0 {
			vq.notify()
		}
	}()
	for ; used < maxChainsPerPass; used++ {
		ch, ok, err := vq.pop(&b.mem)
		if err != nil {
			b.breakRing(txQueue, err)
			return
		}
		if !ok {
			return
		}
		b.receive(ch.readable)
		vq.push(ch.head, 0)
	}
	b.kick()
}

// receive decodes one guest packet from the buffers of a tx chain.
func (b *Backend) receive(bufs [][]byte) {
	h, err := parsePacket(bufs)
	if err != nil {
		b.stats.PacketsDropped++
		b.logGuest(&b.guestLog, "vsock backend: dropping a tx packet: %v", err)
		return
	}
	b.handlePacket(&h, bufs)
}

// handlePacket is the stream state machine for one packet from the guest;
// its payload (h.len bytes, checked by parsePacket) follows the header in
// bufs.
func (b *Backend) handlePacket(h *pktHdr, bufs [][]byte) {
	if h.dstCID != HostCID || h.srcCID != b.cfg.GuestCID {
		b.stats.PacketsDropped++
		b.logGuest(&b.guestLog, "vsock backend: dropping %s from CID %d to CID %d", opName(h.op), h.srcCID, h.dstCID)
		return
	}
	key := connKey{local: h.dstPort, peer: h.srcPort}
	if h.typ != typeStream {
		if h.op != opRst {
			b.enqueue(&outPacket{local: key.local, peer: key.peer, op: opRst})
		}
		return
	}
	c := b.conns[key]
	if c == nil {
		switch h.op {
		case opRequest:
			b.guestConnect(key, h)
		case opRst:
		default:
			b.enqueue(&outPacket{local: key.local, peer: key.peer, op: opRst})
		}
		return
	}
	// Every packet carries the guest's current credit.
	c.peerBufAlloc, c.peerFwdCnt = h.bufAlloc, h.fwdCnt
	c.cond.Broadcast()
	switch h.op {
	case opResponse:
		if c.state != connConnecting || !c.hostInitiated {
			b.resetConn(c, true)
			return
		}
		c.state = connEstablished
		c.readyClosed = true
		close(c.ready)
	case opRW:
		switch {
		case c.state != connEstablished:
			b.resetConn(c, true)
		case c.peerShut&shutdownSend != 0 || h.len == 0:
		case int64(c.rxCnt-c.fwdCnt)+int64(h.len) > hostBufAlloc:
			// Beyond the credit the backend advertised (buf_alloc minus
			// what it holds, which is at most what the guest was told):
			// nothing more is buffered for this stream.
			b.stats.CreditViolations++
			b.logGuest(&b.creditLog, "vsock backend: guest port %d → host port %d: %d bytes sent with %d in flight, beyond the %d-byte buffer: reset",
				key.peer, key.local, h.len, c.rxCnt-c.fwdCnt, hostBufAlloc)
			b.resetConn(c, true)
		default:
			c.appendInbound(bufs, pktHdrSize, int(h.len))
			c.rxCnt += h.len
			b.stats.BytesFromGuest += uint64(h.len)
		}
	case opCreditUpdate:
	case opCreditRequest:
		b.queueCreditUpdate(c)
	case opShutdown:
		c.peerShut |= h.flags & shutdownBoth
		b.maybeFinish(c)
	case opRst:
		b.resetConn(c, false)
	default: // a second REQUEST, or garbage
		b.resetConn(c, true)
	}
}

// guestConnect answers a guest's REQUEST by dialling the host listener for
// its port, <HybridSocket>_<port>, off the worker.
func (b *Backend) guestConnect(key connKey, h *pktHdr) {
	if len(b.conns) >= b.cfg.MaxConnections {
		b.stats.ConnectionsRefused++
		b.logGuest(&b.guestLog, "vsock backend: guest port %d → host port %d refused: %d streams open", key.peer, key.local, len(b.conns))
		b.enqueue(&outPacket{local: key.local, peer: key.peer, op: opRst})
		return
	}
	c := b.newConn(key.local, key.peer, false)
	c.peerBufAlloc, c.peerFwdCnt = h.bufAlloc, h.fwdCnt
	path := b.cfg.HybridSocket + "_" + strconv.FormatUint(uint64(key.local), 10)
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
		b.mu.Lock()
		defer b.mu.Unlock()
		if c.state != connConnecting {
			if uc != nil {
				uc.Close()
			}
			return
		}
		if err != nil {
			b.logGuest(&b.guestLog, "vsock backend: guest port %d → host port %d refused: %v", key.peer, key.local, err)
			b.resetConn(c, true)
			return
		}
		c.uc = uc
		c.state = connEstablished
		b.send(c, opResponse, 0)
		b.startStream(c)
	}()
}

// processRX puts queued host → guest packets into the guest's rx buffers.
func (b *Backend) processRX() {
	vq := &b.vqs[rxQueue]
	if !vq.ready() || len(b.sendq) == 0 {
		return
	}
	used := 0
	defer func() {
		if used > 0 {
			vq.notify()
		}
	}()
	var raw [pktHdrSize]byte
	for len(b.sendq) > 0 {
		if used == maxChainsPerPass {
			b.kick()
			return
		}
		ch, ok, err := vq.pop(&b.mem)
		if err != nil {
			b.breakRing(rxQueue, err)
			return
		}
		if !ok {
			return // the guest kicks when it adds buffers
		}
		used++
		room := ch.writableLen() - pktHdrSize
		if room < 0 {
			b.logGuest(&b.guestLog, "vsock backend: rx buffer of %d bytes cannot hold a header", ch.writableLen())
			vq.push(ch.head, 0)
			continue
		}
		h, data := b.nextOut(room)
		h.encode(raw[:])
		scatter(ch.writable, 0, raw[:])
		scatter(ch.writable, pktHdrSize, data)
		vq.push(ch.head, uint32(pktHdrSize+len(data)))
	}
}

// nextOut takes the next packet for the guest off sendq, or as much of a
// data packet as fits in room bytes of payload, and returns its header and
// payload. sendq is not empty.
func (b *Backend) nextOut(room int) (pktHdr, []byte) {
	p := b.sendq[0]
	data := p.data
	if len(data) > room {
		data = data[:room]
	}
	h := pktHdr{
		srcCID: HostCID, dstCID: b.cfg.GuestCID,
		srcPort: p.local, dstPort: p.peer,
		len: uint32(len(data)), typ: typeStream, op: p.op, flags: p.flags,
	}
	if c := p.c; c != nil {
		h.bufAlloc, h.fwdCnt = hostBufAlloc, c.fwdCnt
		c.lastFwdSent = c.fwdCnt
	}
	switch p.op {
	case opRW:
		b.stats.BytesToGuest += uint64(len(data))
		p.data = p.data[len(data):]
		p.c.queuedOut -= len(data)
		b.releaseOut(len(data))
		p.c.cond.Broadcast()
		if len(p.data) > 0 {
			return h, data
		}
	case opCreditUpdate:
		p.c.creditQueued = false
	case opRst:
		b.stats.ResetsSent++
	}
	b.dequeued(p)
	b.sendq[0] = nil
	b.sendq = b.sendq[1:]
	return h, data
}

package vsock

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// usage is what the backend holds, measured from its queues rather than
// from its own counters.
type usage struct {
	conns       int
	sendq       int
	resets      int // RSTs waiting for rx buffers
	control     int // other control packets waiting
	dataPackets int
	dataBytes   int // host → guest payload waiting
	maxInbound  int // most guest → host bytes held for one stream
	inboundCap  int // memory those take, all streams
}

func (b *Backend) usage() usage {
	b.mu.Lock()
	defer b.mu.Unlock()
	u := usage{conns: len(b.conns), sendq: len(b.sendq)}
	for _, p := range b.sendq {
		switch p.op {
		case opRW:
			u.dataPackets++
			u.dataBytes += len(p.data)
		case opRst:
			u.resets++
		default:
			u.control++
		}
	}
	for _, c := range b.conns {
		n := 0
		for _, chunk := range c.inbound {
			n += len(chunk)
			u.inboundCap += cap(chunk)
		}
		u.maxInbound = max(u.maxInbound, n)
	}
	return u
}

// checkAccounting checks the backend's counters against its queues and
// its bounds. The caller holds b.mu.
func (b *Backend) checkAccounting() error {
	var resets, control, data int
	perConn := map[*conn]int{}
	queued := map[*conn]int{}
	for _, p := range b.sendq {
		switch {
		case p.op == opRW:
			data += len(p.data) + outPacketCost
			queued[p.c] += len(p.data)
		case p.orphanRst:
			resets++
		default:
			control++
			perConn[p.c]++
		}
	}
	var errs []string
	add := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	if resets != b.queuedResets || resets > maxQueuedResets {
		add("%d RSTs queued, counted %d, cap %d", resets, b.queuedResets, maxQueuedResets)
	}
	if control != b.queuedControl {
		add("%d control packets queued, counted %d", control, b.queuedControl)
	}
	if b.pendingOut < data || b.pendingOut > maxPendingOut || (len(b.conns) == 0 && b.pendingOut != 0) {
		add("%d data bytes (with overhead) queued, %d counted, cap %d", data, b.pendingOut, maxPendingOut)
	}
	if len(b.conns) > b.cfg.MaxConnections {
		add("%d streams, cap %d", len(b.conns), b.cfg.MaxConnections)
	}
	for c, n := range perConn {
		if c != nil && c.state != connClosed && n > 3 {
			add("stream %v: %d control packets queued", c.key, n)
		}
	}
	for _, c := range b.conns {
		n := 0
		for i, chunk := range c.inbound {
			n += len(chunk)
			if i < len(c.inbound)-1 && len(chunk) != cap(chunk) {
				add("stream %v: chunk %d of %d holds %d of %d bytes", c.key, i, len(c.inbound), len(chunk), cap(chunk))
			}
		}
		if n != c.inboundBytes || n > hostBufAlloc || c.rxCnt-c.fwdCnt > hostBufAlloc {
			add("stream %v: %d bytes held, counted %d, %d in flight", c.key, n, c.inboundBytes, c.rxCnt-c.fwdCnt)
		}
		if queued[c] != c.queuedOut || c.queuedOut >= 2*readChunk {
			add("stream %v: %d bytes queued, counted %d", c.key, queued[c], c.queuedOut)
		}
	}
	if errs != nil {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

func (b *Backend) mustAccount(t *testing.T) {
	t.Helper()
	b.mu.Lock()
	err := b.checkAccounting()
	b.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
}

// A guest that ignores the credit the backend advertised, while the host
// reader is stalled, gets its stream reset: the backend never holds more
// than the buffer it advertised.
func TestCreditOverrunResets(t *testing.T) {
	g := startedSim(t)
	c, r := hybridDial(t, g.hybrid, 1024)
	hostPort := g.accept(1024)
	if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "OK ") {
		t.Fatalf("handshake: %q, %v", line, err)
	}
	// The host client reads nothing; the guest sends 4 MiB regardless.
	payload := make([]byte, simTxPayMax)
	for sent := 0; sent < 4<<20 && g.b.Stats().CreditViolations == 0; sent += len(payload) {
		g.xmit(pktHdr{srcPort: 1024, dstPort: hostPort, op: opRW}, payload)
		if u := g.b.usage(); u.maxInbound > hostBufAlloc || u.inboundCap > hostBufAlloc+inboundChunk {
			t.Fatalf("after %d bytes the backend holds %d (in %d bytes of chunks) for a stream that advertised %d",
				sent+len(payload), u.maxInbound, u.inboundCap, hostBufAlloc)
		}
	}
	g.flushTx()
	st := g.b.Stats()
	if st.CreditViolations != 1 {
		t.Fatalf("%d credit violations, want 1", st.CreditViolations)
	}
	for {
		h, _ := g.mustRecv()
		if h.op == opRst && h.srcPort == hostPort && h.dstPort == 1024 {
			break
		}
	}
	// The host client sees what was written before the reset, then EOF.
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := io.Copy(io.Discard, c)
	if err != nil {
		t.Fatalf("host client after the reset: %v", err)
	}
	if n > int64(st.BytesFromGuest) {
		t.Fatalf("host read %d bytes, the backend accepted %d", n, st.BytesFromGuest)
	}
	waitNoStreams(t, g.b)
	if st := g.b.Stats(); st.ResetsSent == 0 || st.Connections != 0 {
		t.Fatalf("stats after the reset: %+v", st)
	}
}

// A stream used within its credit is never reset however small the
// packets: a thousand one-byte packets to a stalled host reader are kept
// in a few chunks, not a thousand buffers.
func TestSmallPacketsWithinCredit(t *testing.T) {
	g := startedSim(t)
	_, r := hybridDial(t, g.hybrid, 1024)
	hostPort := g.accept(1024)
	r.ReadString('\n')
	for i := 0; i < 1000; i++ {
		g.xmit(pktHdr{srcPort: 1024, dstPort: hostPort, op: opRW}, []byte{byte(i)})
	}
	g.flushTx()
	if u := g.b.usage(); u.inboundCap > 2*inboundChunk {
		t.Fatalf("1000 one-byte packets take %d bytes of buffers", u.inboundCap)
	}
	if st := g.b.Stats(); st.CreditViolations != 0 || st.BytesFromGuest != 1000 {
		t.Fatalf("stats: %+v", st)
	}
	g.b.mustAccount(t)
}

// A guest that withholds its rx buffers while it sends packets to streams
// that do not exist cannot make the backend queue an RST for each.
func TestResetFloodWithoutRxBuffers(t *testing.T) {
	g := newSim(t)
	g.setup() // no rx buffers posted
	const n = 3 * maxQueuedResets
	for i := 0; i < n; i++ {
		op := uint16(opRW)
		if i%2 == 1 {
			op = opRequest // to a host port nobody listens on: refused
		}
		g.xmit(pktHdr{srcPort: uint32(10000 + i), dstPort: 7777, op: op}, []byte("x"))
		if i%100 == 0 {
			if u := g.b.usage(); u.sendq > maxQueuedResets {
				t.Fatalf("%d packets queued after %d sent", u.sendq, i+1)
			}
		}
	}
	g.flushTx()
	// Refusals answer after a dial, off the worker: wait for them.
	for deadline := time.Now().Add(10 * time.Second); ; {
		st := g.b.Stats()
		if st.ControlDropped+uint64(st.QueuedControl) == n && st.Connections == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	u := g.b.usage()
	if u.resets != maxQueuedResets || u.sendq != maxQueuedResets {
		t.Fatalf("queue: %+v, want %d RSTs", u, maxQueuedResets)
	}
	if st := g.b.Stats(); st.ControlDropped != n-maxQueuedResets {
		t.Fatalf("%d control packets dropped, want %d", st.ControlDropped, n-maxQueuedResets)
	}
	g.b.mustAccount(t)
	// Once the guest posts buffers it gets the queued RSTs.
	g.fillRx()
	for i := 0; i < maxQueuedResets; i++ {
		if h, _ := g.mustRecv(); h.op != opRst {
			t.Fatalf("got %s", opName(h.op))
		}
	}
	waitNoStreams(t, g.b)
	if st := g.b.Stats(); st.ResetsSent != maxQueuedResets {
		t.Fatalf("%d RSTs sent, want %d", st.ResetsSent, maxQueuedResets)
	}
}

// listenHost listens on the host socket for guest connections to port and
// accepts (and keeps) every connection.
func listenHost(t *testing.T, g *simGuest, port uint32) (accepted <-chan net.Conn) {
	t.Helper()
	ln, err := net.Listen("unix", g.hybrid+"_"+itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan net.Conn, 4*DefaultMaxConnections)
	var conns []net.Conn
	var mu sync.Mutex
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			ch <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	return ch
}

// A guest opening thousands of connections gets MaxConnections of them;
// the rest are refused, as is a host CONNECT, until one closes.
func TestConnectionCap(t *testing.T) {
	g := newSim(t)
	g.setup() // no rx buffers: the RESPONSEs and RSTs wait
	listenHost(t, g, 5000)
	const extra = 1000
	for i := 0; i < DefaultMaxConnections+extra; i++ {
		g.xmit(pktHdr{srcPort: uint32(20000 + i), dstPort: 5000, op: opRequest}, nil)
	}
	g.flushTx()
	for deadline := time.Now().Add(20 * time.Second); ; {
		u := g.b.usage()
		if u.conns > DefaultMaxConnections {
			t.Fatalf("%d streams open, cap %d", u.conns, DefaultMaxConnections)
		}
		if u.control == DefaultMaxConnections { // every RESPONSE queued
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("usage: %+v", u)
		}
		time.Sleep(10 * time.Millisecond)
	}
	st := g.b.Stats()
	if st.ConnectionsRefused != extra || st.Connections != DefaultMaxConnections {
		t.Fatalf("stats: %+v", st)
	}
	if u := g.b.usage(); u.resets != extra {
		t.Fatalf("%d RSTs queued, want %d", u.resets, extra)
	}
	g.b.mustAccount(t)

	_, r := hybridDial(t, g.hybrid, 1024)
	if line, _ := r.ReadString('\n'); !strings.HasPrefix(line, "ERR too many") {
		t.Fatalf("host CONNECT at the cap: %q", line)
	}
	// One stream closes; another may open.
	g.xmit(pktHdr{srcPort: 20000, dstPort: 5000, op: opRst}, nil)
	g.xmit(pktHdr{srcPort: 40000, dstPort: 5000, op: opRequest}, nil)
	g.flushTx()
	if st := g.b.Stats(); st.ConnectionsRefused != extra+1 || st.Connections > DefaultMaxConnections {
		t.Fatalf("stats: %+v", st)
	}
	g.b.mu.Lock()
	_, ok := g.b.conns[connKey{5000, 40000}]
	g.b.mu.Unlock()
	if !ok {
		t.Fatal("a new stream was refused after one closed")
	}
}

// Host peers writing to a guest that claims vast credit but withholds its
// rx buffers: what the backend queues for the guest stays within
// maxPendingOut, and all of it arrives once the guest takes it.
func TestHostToGuestDataBounded(t *testing.T) {
	g := newSim(t)
	g.setup()
	accepted := listenHost(t, g, 5000)
	const streams, each = 100, 64 << 10
	for i := 0; i < streams; i++ {
		g.xmit(pktHdr{srcPort: uint32(20000 + i), dstPort: 5000, op: opRequest, bufAlloc: 0xffffffff}, nil)
	}
	g.flushTx()
	for i := 0; i < streams; i++ {
		select {
		case c := <-accepted:
			go c.Write(make([]byte, each))
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of %d streams connected", i, streams)
		}
	}
	// Wait for the readers to fill what they may: the whole budget.
	for deadline := time.Now().Add(10 * time.Second); ; {
		u := g.b.usage()
		if u.dataBytes+outPacketCost*u.dataPackets > maxPendingOut {
			t.Fatalf("%d bytes in %d packets queued for the guest, cap %d", u.dataBytes, u.dataPackets, maxPendingOut)
		}
		if g.b.Stats().QueuedDataBytes >= maxPendingOut-outPacketCost {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d bytes queued: %+v", u.dataBytes, g.b.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
	g.b.mustAccount(t)

	g.fillRx()
	got := map[uint32]int{}
	total := 0
	for total < streams*each {
		h, p, ok := g.recv(10 * time.Second)
		if !ok {
			t.Fatalf("%d of %d bytes received; %+v; %+v", total, streams*each, g.b.usage(), g.b.Stats())
		}
		switch h.op {
		case opResponse:
		case opRW:
			got[h.dstPort] += len(p)
			total += len(p)
		default:
			t.Fatalf("got %s", opName(h.op))
		}
	}
	for port, n := range got {
		if n != each {
			t.Fatalf("stream %d: %d bytes, want %d", port, n, each)
		}
	}
	if st := g.b.Stats(); st.BytesToGuest != streams*each {
		t.Fatalf("stats: %+v", st)
	}
	g.b.mustAccount(t)
}

// Log lines a guest provokes are rate-limited, and say how many were
// suppressed.
func TestGuestLogRateLimited(t *testing.T) {
	var lines []string
	b := newBackendState(Config{Logf: func(f string, a ...any) { lines = append(lines, fmt.Sprintf(f, a...)) }})
	var l rateLog
	for i := 0; i < 1000; i++ {
		b.logGuest(&l, "bad packet %d", i)
	}
	if len(lines) != 1 {
		t.Fatalf("%d lines logged for 1000 bad packets", len(lines))
	}
	l.last = l.last.Add(-guestLogInterval)
	b.logGuest(&l, "bad packet %d", 1000)
	if len(lines) != 2 || lines[1] != "bad packet 1000 (999 similar suppressed)" {
		t.Fatalf("lines: %q", lines)
	}
}

// A front-end that sends more descriptors with one message than a message
// may carry ends its session, and none of them leaks.
func TestTooManyDescriptors(t *testing.T) {
	before := countFDs(t)
	g := newSim(t)
	g.setup()
	fds := make([]int, maxFDs)
	for i := range fds {
		fds[i] = g.memfd
	}
	hdr := make([]byte, hdrSize)
	binary.LittleEndian.PutUint32(hdr, reqSetMemTable)
	binary.LittleEndian.PutUint32(hdr[4:], flagVersion)
	binary.LittleEndian.PutUint32(hdr[8:], 8)
	if _, _, err := g.fe.WriteMsgUnix(hdr, unix.UnixRights(fds...), nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := g.fe.WriteMsgUnix(make([]byte, 8), unix.UnixRights(fds...), nil); err != nil {
		t.Fatal(err)
	}
	g.fe.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := g.fe.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("front-end after %d descriptors: %v, want EOF", 2*maxFDs, err)
	}
	g.b.Close()
	g.fe.Close()
	// The sim's own descriptors (memfd, eventfds) close at cleanup.
	if n := countFDs(t); n > before+1+2*numQueues {
		t.Fatalf("descriptors %d → %d", before, n)
	}
}

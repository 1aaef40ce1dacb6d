package vsock

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestVhostUserNegotiation(t *testing.T) {
	g := newSim(t)
	g.setup()
	// REPLY_ACK reports a failure for what is not supported...
	if st := g.call(reqSetLogBase, make([]byte, 16)); st == 0 {
		t.Error("SET_LOG_BASE acknowledged, but logging was never offered")
	}
	// ...and for features that were not offered.
	if st := g.call(reqSetFeatures, u64Bytes(featureVersion1|featureLogAll)); st == 0 {
		t.Error("SET_FEATURES with VHOST_F_LOG_ALL acknowledged")
	}
	if st := g.call(reqSetVringNum, vringState(7, 64)); st == 0 {
		t.Error("SET_VRING_NUM for queue 7 acknowledged")
	}
	// GET_VRING_BASE stops the ring and says where the guest's next buffer is.
	g.send(reqGetVringBase, 0, vringState(rxQueue, 0))
	r := g.reply(reqGetVringBase)
	if idx, num := binary.LittleEndian.Uint32(r), binary.LittleEndian.Uint32(r[4:]); idx != rxQueue || num != 0 {
		t.Errorf("GET_VRING_BASE = %d, %d; want 0, 0", idx, num)
	}
}

// A ring whose base is not 0 (a device started again after
// GET_VRING_BASE) resumes there: at the base for the avail ring, at the
// guest's used index for the used ring.
func TestVringBaseResumes(t *testing.T) {
	g := newSim(t)
	g.setup()
	q := g.q[txQueue]
	q.availIdx, q.seen = 10, 10
	binary.LittleEndian.PutUint16(g.mem[q.avail()+2:], 10)
	binary.LittleEndian.PutUint16(g.mem[q.used()+2:], 10)
	g.mustCall(reqSetVringBase, vringState(txQueue, 10))
	addr := make([]byte, 40)
	binary.LittleEndian.PutUint32(addr, txQueue)
	binary.LittleEndian.PutUint64(addr[8:], simUVABase+q.desc())
	binary.LittleEndian.PutUint64(addr[16:], simUVABase+q.used())
	binary.LittleEndian.PutUint64(addr[24:], simUVABase+q.avail())
	g.mustCall(reqSetVringAddr, addr)
	g.fillRx()
	g.xmit(pktHdr{srcPort: 1, dstPort: 2, op: opRW}, []byte("x")) // unknown stream: RST
	h, _ := g.mustRecv()
	if h.op != opRst || h.dstPort != 1 || h.srcPort != 2 {
		t.Fatalf("got %s %d→%d, want RST 2→1", opName(h.op), h.srcPort, h.dstPort)
	}
	if !g.reclaimTx(5 * time.Second) {
		t.Fatal("tx chain not returned")
	}
	if seen := g.q[txQueue].seen; seen != 11 {
		t.Fatalf("used idx %d, want 11", seen)
	}
}

func TestHostConnectRefusedWhenDeviceNotReady(t *testing.T) {
	g := newSim(t)
	_, r := hybridDial(t, g.hybrid, 1024)
	line, _ := r.ReadString('\n')
	if !strings.HasPrefix(line, "ERR ") || !strings.Contains(line, "not ready") {
		t.Fatalf("got %q, want ERR ... not ready", line)
	}
}

func TestHostConnectRefusedByGuest(t *testing.T) {
	g := startedSim(t)
	c, r := hybridDial(t, g.hybrid, 1024)
	h, _ := g.mustRecv()
	if h.op != opRequest || h.dstPort != 1024 || h.srcCID != HostCID || h.dstCID != simGuestCID {
		t.Fatalf("got %+v, want a REQUEST to port 1024", h)
	}
	g.xmit(pktHdr{srcPort: 1024, dstPort: h.srcPort, op: opRst}, nil)
	line, _ := r.ReadString('\n')
	if !strings.HasPrefix(line, "ERR ") || !strings.Contains(line, "refused") {
		t.Fatalf("got %q, want ERR ... refused", line)
	}
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("after ERR: %v, want EOF", err)
	}
}

// accept answers the REQUEST for port with RESPONSE and returns the host's port.
func (g *simGuest) accept(port uint32) uint32 {
	g.t.Helper()
	h, _ := g.mustRecv()
	if h.op != opRequest || h.dstPort != port || h.bufAlloc != hostBufAlloc {
		g.t.Fatalf("got %s to %d (buf_alloc %d), want REQUEST to %d", opName(h.op), h.dstPort, h.bufAlloc, port)
	}
	g.xmit(pktHdr{srcPort: port, dstPort: h.srcPort, op: opResponse}, nil)
	return h.srcPort
}

// guestStream is the guest's end of one stream: it keeps the credit
// accounting both ways and checks the backend keeps to it.
type guestStream struct {
	g                  *simGuest
	port, hostPort     uint32
	rxCnt, fwdCnt      uint32 // received from the host, consumed
	advertisedFwd      uint32
	txCnt              uint32 // sent to the host
	hostBuf, hostFwd   uint32 // the backend's credit as last heard
	shutdown           uint32
	rst                bool
	received           bytes.Buffer
	advertiseEvery     uint32
	consumeImmediately bool
}

// handle applies one packet from the backend to the stream.
func (s *guestStream) handle(h pktHdr, p []byte) {
	t := s.g.t
	t.Helper()
	if h.dstPort != s.port || h.srcPort != s.hostPort {
		t.Fatalf("%s for %d→%d on stream %d→%d", opName(h.op), h.srcPort, h.dstPort, s.hostPort, s.port)
	}
	s.hostBuf, s.hostFwd = h.bufAlloc, h.fwdCnt
	switch h.op {
	case opRW:
		s.rxCnt += h.len
		if s.rxCnt-s.advertisedFwd > simGuestBuf {
			t.Fatalf("backend overran the guest's credit: %d bytes received, %d consumed as advertised, buf_alloc %d", s.rxCnt, s.advertisedFwd, simGuestBuf)
		}
		s.received.Write(p)
		s.fwdCnt += h.len
		if s.fwdCnt-s.advertisedFwd >= s.advertiseEvery {
			s.advertisedFwd = s.fwdCnt
			s.g.xmit(pktHdr{srcPort: s.port, dstPort: s.hostPort, op: opCreditUpdate, fwdCnt: s.fwdCnt}, nil)
		}
	case opShutdown:
		s.shutdown |= h.flags
	case opRst:
		s.rst = true
	case opCreditUpdate:
	default:
		t.Fatalf("unexpected %s", opName(h.op))
	}
}

// write sends data to the host within the backend's credit, waiting for
// its credit updates as needed.
func (s *guestStream) write(data []byte) {
	for len(data) > 0 {
		for int64(s.hostBuf)-int64(s.txCnt-s.hostFwd) <= 0 {
			h, p := s.g.mustRecv()
			s.handle(h, p)
		}
		n := min(len(data), simTxPayMax, int(int64(s.hostBuf)-int64(s.txCnt-s.hostFwd)))
		s.g.xmit(pktHdr{srcPort: s.port, dstPort: s.hostPort, op: opRW, fwdCnt: s.fwdCnt}, data[:n])
		s.txCnt += uint32(n)
		data = data[n:]
	}
}

// A host-initiated stream carries data both ways with checksums, with a
// host reader slower than the guest writer and a guest that returns credit
// only when its buffer is full: the backend must stall, not drop or overrun.
func TestHostStreamBothWaysWithFlowControl(t *testing.T) {
	g := startedSim(t)
	c, r := hybridDial(t, g.hybrid, 1024)
	hostPort := g.accept(1024)
	line, err := r.ReadString('\n')
	if err != nil || line != "OK "+itoa(hostPort)+"\n" {
		t.Fatalf("handshake: %q, %v", line, err)
	}
	s := &guestStream{g: g, port: 1024, hostPort: hostPort, hostBuf: hostBufAlloc, advertiseEvery: simGuestBuf}

	up := make([]byte, 700<<10) // host → guest: ten times the guest's buffer
	down := make([]byte, 1<<20) // guest → host: four times the backend's
	rand.Read(up)
	rand.Read(down)
	writeErr := make(chan error, 1)
	go func() {
		_, err := c.Write(up)
		if err == nil {
			err = c.CloseWrite()
		}
		writeErr <- err
	}()
	readDone := make(chan []byte, 1)
	go func() {
		var got bytes.Buffer
		buf := make([]byte, 8<<10)
		for {
			n, err := c.Read(buf)
			got.Write(buf[:n])
			if err != nil {
				break
			}
			time.Sleep(200 * time.Microsecond) // a slow host reader
		}
		readDone <- got.Bytes()
	}()

	s.write(down)
	for s.shutdown&shutdownSend == 0 {
		h, p := g.mustRecv()
		s.handle(h, p)
	}
	if err := <-writeErr; err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(s.received.Bytes()) != sha256.Sum256(up) {
		t.Fatalf("guest received %d bytes, not the %d the host sent", s.received.Len(), len(up))
	}
	// The guest closes: SHUTDOWN both ways; the backend flushes, closes the
	// host end and answers RST.
	g.xmit(pktHdr{srcPort: s.port, dstPort: s.hostPort, op: opShutdown, flags: shutdownBoth, fwdCnt: s.fwdCnt}, nil)
	for !s.rst {
		h, p := g.mustRecv()
		s.handle(h, p)
	}
	got := <-readDone
	if sha256.Sum256(got) != sha256.Sum256(down) {
		t.Fatalf("host received %d bytes, not the %d the guest sent", len(got), len(down))
	}
	waitNoStreams(t, g.b)
}

func waitNoStreams(t *testing.T, b *Backend) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; {
		b.mu.Lock()
		n, q := len(b.conns), len(b.sendq)
		acct := b.checkAccounting()
		b.mu.Unlock()
		if n == 0 && q == 0 && acct == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d streams and %d queued packets left; accounting: %v", n, q, acct)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A guest connection to host port P reaches the listener at <path>_P;
// without one it is refused.
func TestGuestConnectForwarded(t *testing.T) {
	g := startedSim(t)
	ln, err := net.Listen("unix", g.hybrid+"_5000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	g.xmit(pktHdr{srcPort: 40000, dstPort: 5001, op: opRequest}, nil)
	if h, _ := g.mustRecv(); h.op != opRst || h.dstPort != 40000 {
		t.Fatalf("REQUEST to a port nobody listens on: got %s", opName(h.op))
	}

	g.xmit(pktHdr{srcPort: 40001, dstPort: 5000, op: opRequest}, nil)
	h, _ := g.mustRecv()
	if h.op != opResponse || h.dstPort != 40001 || h.srcPort != 5000 {
		t.Fatalf("got %s %d→%d, want RESPONSE 5000→40001", opName(h.op), h.srcPort, h.dstPort)
	}
	hc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	s := &guestStream{g: g, port: 40001, hostPort: 5000, hostBuf: h.bufAlloc, advertiseEvery: 4096}
	s.write([]byte("ping"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(hc, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("host read %q, %v", buf, err)
	}
	hc.Write([]byte("pong"))
	for s.received.Len() < 4 {
		h, p := g.mustRecv()
		s.handle(h, p)
	}
	if s.received.String() != "pong" {
		t.Fatalf("guest got %q", s.received.String())
	}
	// The host closes: the guest hears SHUTDOWN(SEND); the guest closes too
	// and gets its RST.
	hc.Close()
	for s.shutdown&shutdownSend == 0 {
		h, p := g.mustRecv()
		s.handle(h, p)
	}
	g.xmit(pktHdr{srcPort: s.port, dstPort: s.hostPort, op: opShutdown, flags: shutdownBoth}, nil)
	for !s.rst {
		h, p := g.mustRecv()
		s.handle(h, p)
	}
	waitNoStreams(t, g.b)
}

// A host client that disconnects mid-stream resets the guest's stream;
// the backend keeps serving the others.
func TestHostDisconnectMidStream(t *testing.T) {
	g := startedSim(t)
	c1, r1 := hybridDial(t, g.hybrid, 1024)
	p1 := g.accept(1024)
	r1.ReadString('\n')
	c2, r2 := hybridDial(t, g.hybrid, 1024)
	p2 := g.accept(1024)
	r2.ReadString('\n')
	s1 := &guestStream{g: g, port: 1024, hostPort: p1, hostBuf: hostBufAlloc, advertiseEvery: 4096}
	s2 := &guestStream{g: g, port: 1024, hostPort: p2, hostBuf: hostBufAlloc, advertiseEvery: 4096}

	// The guest sends to a host that stops reading and goes away.
	s1.write(make([]byte, 16<<10))
	c1.Close()
	// Its next data hits a closed socket: RST (or SHUTDOWN first, from the EOF).
	deadline := time.Now().Add(10 * time.Second)
	for !s1.rst && time.Now().Before(deadline) {
		if s1.shutdown == 0 {
			g.xmit(pktHdr{srcPort: 1024, dstPort: p1, op: opRW}, []byte("more"))
		}
		h, p, ok := g.recv(100 * time.Millisecond)
		if !ok {
			continue
		}
		switch h.srcPort {
		case p1:
			s1.handle(h, p)
		default:
			t.Fatalf("packet for %d", h.srcPort)
		}
		if s1.shutdown&shutdownSend != 0 {
			// A guest app reading EOF closes its socket.
			g.xmit(pktHdr{srcPort: 1024, dstPort: p1, op: opShutdown, flags: shutdownBoth}, nil)
			s1.shutdown = 0xff
		}
	}
	if !s1.rst {
		t.Fatal("guest stream of the vanished host client was not reset")
	}
	// The other stream still works.
	c2.Write([]byte("still here"))
	for s2.received.Len() < 10 {
		h, p := g.mustRecv()
		if h.srcPort == p1 && h.op == opRst {
			continue // answers to the "more" packets in flight
		}
		s2.handle(h, p)
	}
	if s2.received.String() != "still here" {
		t.Fatalf("second stream got %q", s2.received.String())
	}
}

// Stopping a ring (the guest driver resetting) drops every stream: host
// clients see their connection close. The device then starts again.
func TestRingStopResetsStreams(t *testing.T) {
	g := startedSim(t)
	c, r := hybridDial(t, g.hybrid, 1024)
	g.accept(1024)
	r.ReadString('\n')
	g.send(reqGetVringBase, 0, vringState(txQueue, 0))
	g.reply(reqGetVringBase)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("host client after ring stop: %v, want EOF", err)
	}
	waitNoStreams(t, g.b)
	_, r = hybridDial(t, g.hybrid, 1024)
	if line, _ := r.ReadString('\n'); !strings.Contains(line, "not ready") {
		t.Fatalf("connect with a stopped ring: %q", line)
	}
}

// A guest that corrupts its ring breaks the queue, not the backend.
func TestCorruptRing(t *testing.T) {
	g := startedSim(t)
	q := g.q[txQueue]
	g.putDesc(q, 0, 0x1fffff00, 4096, 0, 0) // outside guest memory
	g.makeAvail(q, 0)
	g.kick(q)
	deadline := time.Now().Add(5 * time.Second)
	for {
		g.b.mu.Lock()
		broken := g.b.vqs[txQueue].broken
		g.b.mu.Unlock()
		if broken != nil {
			t.Logf("queue broken: %v", broken)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("corrupt descriptor not detected")
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case <-g.b.Done():
		t.Fatalf("backend stopped: %v", g.b.Err())
	default:
	}
}

// Close leaves no goroutine, descriptor, socket file or mapping behind,
// also with a session and a stream open.
func TestCloseLeavesNothing(t *testing.T) {
	before := runtime.NumGoroutine()
	fdsBefore := countFDs(t)
	t.Run("session", func(t *testing.T) {
		g := startedSim(t)
		c, r := hybridDial(t, g.hybrid, 1024)
		g.accept(1024)
		r.ReadString('\n')
		if err := g.b.Close(); err != nil {
			t.Fatal(err)
		}
		if err := g.b.Err(); err != nil {
			t.Errorf("Err after Close: %v", err)
		}
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("host client after Close: %v", err)
		}
		if _, err := os.Stat(g.hybrid); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind: %v", g.hybrid, err)
		}
		g.b.mu.Lock()
		if len(g.b.mem.regions) != 0 {
			t.Error("guest memory still mapped")
		}
		g.b.mu.Unlock()
		g.b.Close() // idempotent
	})
	for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > before || countFDs(t) > fdsBefore; {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("goroutines %d → %d, descriptors %d → %d:\n%s", before, runtime.NumGoroutine(),
				fdsBefore, countFDs(t), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func countFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func TestProbeCID(t *testing.T) {
	busy := map[uint64]bool{3: true, 4: true}
	cid, err := probeCID(0, func(c uint64) error {
		if busy[c] {
			return errEADDRINUSE
		}
		return nil
	})
	if err != nil || cid != 5 {
		t.Fatalf("probeCID = %d, %v; want 5", cid, err)
	}
	if _, err := probeCID(3, func(uint64) error { return errENOTTY }); err == nil || !strings.Contains(err.Error(), "guest CID 3") {
		t.Fatalf("probeCID with a failing ioctl: %v", err)
	}
	if _, err := probeCID(3, func(uint64) error { return errEADDRINUSE }); err == nil {
		t.Fatal("probeCID found a CID where all are busy")
	}
	// A file that is not the vhost-vsock device fails the ioctl clearly.
	f, _, err := OpenVhostVsock(os.DevNull, 3)
	if err == nil {
		f.Close()
		t.Fatal("OpenVhostVsock on /dev/null succeeded")
	}
	if _, _, err := OpenVhostVsock("/nonexistent/vhost-vsock", 3); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("OpenVhostVsock on a missing path: %v", err)
	}
}

var (
	errEADDRINUSE = unix.EADDRINUSE
	errENOTTY     = unix.ENOTTY
)

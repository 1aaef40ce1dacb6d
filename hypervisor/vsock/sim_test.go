package vsock

import (
	"bufio"
	"encoding/binary"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The tests play QEMU and the guest's virtio-vsock driver: guest memory is a
// memfd shared with the backend through SET_MEM_TABLE, the split rings live
// in it, kicks and interrupts are eventfds, and vhost-user messages go over
// the backend's real unix socket.

const (
	simMemSize   = 2 << 20
	simRegion    = 1 << 20 // two regions of 1 MiB, to exercise translation
	simUVABase   = 0x7f0000000000
	simQSize     = 64
	simRxBufSize = pktHdrSize + 4096 // Linux 6.1's rx buffers
	simRxBufBase = 0x10000
	simTxHdrBase = 0x60000
	simTxPayBase = 0xf0000 // slots 4 and up are in the second region
	simTxPayMax  = 16 << 10
	simGuestCID  = 3
	simGuestBuf  = 64 << 10 // the guest's buf_alloc
)

type simQueue struct {
	idx              int
	base             uint64
	availIdx, seen   uint16
	kick, call       int
	txFree           []bool
	outstandingChain int
}

func (q *simQueue) desc() uint64  { return q.base }
func (q *simQueue) avail() uint64 { return q.base + 0x400 }
func (q *simQueue) used() uint64  { return q.base + 0x800 }

type simGuest struct {
	t      *testing.T
	mem    []byte
	memfd  int
	fe     *net.UnixConn
	q      [numQueues]*simQueue
	b      *Backend
	hybrid string
}

func newBackend(t *testing.T) (*Backend, string, string) {
	t.Helper()
	dir := t.TempDir()
	vu, hy := filepath.Join(dir, "vhost.sock"), filepath.Join(dir, "vsock.sock")
	b, err := Listen(Config{VhostUserSocket: vu, HybridSocket: hy, GuestCID: simGuestCID, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, vu, hy
}

// newSim connects a simulated QEMU and guest to a new backend, without
// setting the device up.
func newSim(t *testing.T) *simGuest {
	t.Helper()
	b, vu, hy := newBackend(t)
	fd, err := unix.MemfdCreate("sim-guest", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Ftruncate(fd, simMemSize); err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(fd, 0, simMemSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	fe, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: vu, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	g := &simGuest{t: t, mem: mem, memfd: fd, fe: fe, b: b, hybrid: hy}
	for i := range g.q {
		kick, err1 := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		call, err2 := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		g.q[i] = &simQueue{idx: i, base: uint64(i) * 0x1000, kick: kick, call: call}
	}
	g.q[txQueue].txFree = make([]bool, simQSize/2)
	for i := range g.q[txQueue].txFree {
		g.q[txQueue].txFree[i] = true
	}
	t.Cleanup(func() {
		fe.Close()
		for _, q := range g.q {
			unix.Close(q.kick)
			unix.Close(q.call)
		}
		unix.Munmap(mem)
		unix.Close(fd)
	})
	return g
}

// startedSim is a sim whose device is fully set up, with rx buffers posted.
func startedSim(t *testing.T) *simGuest {
	g := newSim(t)
	g.setup()
	g.fillRx()
	return g
}

// --- vhost-user front-end ---

func (g *simGuest) send(req, flags uint32, payload []byte, fds ...int) {
	g.t.Helper()
	b := make([]byte, hdrSize+len(payload))
	binary.LittleEndian.PutUint32(b[0:], req)
	binary.LittleEndian.PutUint32(b[4:], flagVersion|flags)
	binary.LittleEndian.PutUint32(b[8:], uint32(len(payload)))
	copy(b[hdrSize:], payload)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := g.fe.WriteMsgUnix(b, oob, nil); err != nil {
		g.t.Fatalf("sending %s: %v", reqName(req), err)
	}
}

func (g *simGuest) reply(req uint32) []byte {
	g.t.Helper()
	g.fe.SetReadDeadline(time.Now().Add(5 * time.Second))
	var hdr [hdrSize]byte
	if _, err := readAll(g.fe, hdr[:]); err != nil {
		g.t.Fatalf("reply to %s: %v", reqName(req), err)
	}
	if r := binary.LittleEndian.Uint32(hdr[:]); r != req {
		g.t.Fatalf("reply to %s is for %s", reqName(req), reqName(r))
	}
	if f := binary.LittleEndian.Uint32(hdr[4:]); f != flagVersion|flagReply {
		g.t.Fatalf("reply flags %#x", f)
	}
	p := make([]byte, binary.LittleEndian.Uint32(hdr[8:]))
	if _, err := readAll(g.fe, p); err != nil {
		g.t.Fatal(err)
	}
	return p
}

func readAll(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// call sends a message that REPLY_ACK answers and returns the status.
func (g *simGuest) call(req uint32, payload []byte, fds ...int) uint64 {
	g.t.Helper()
	g.send(req, flagNeedReply, payload, fds...)
	return binary.LittleEndian.Uint64(g.reply(req))
}

func (g *simGuest) mustCall(req uint32, payload []byte, fds ...int) {
	g.t.Helper()
	if st := g.call(req, payload, fds...); st != 0 {
		g.t.Fatalf("%s: status %d", reqName(req), st)
	}
}

func vringState(idx, num uint32) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint32(b, idx)
	binary.LittleEndian.PutUint32(b[4:], num)
	return b
}

func (g *simGuest) memTable() []byte {
	p := make([]byte, 8+2*32)
	binary.LittleEndian.PutUint32(p, 2)
	for i := 0; i < 2; i++ {
		r := p[8+32*i:]
		gpa := uint64(i * simRegion)
		binary.LittleEndian.PutUint64(r[0:], gpa)
		binary.LittleEndian.PutUint64(r[8:], simRegion)
		binary.LittleEndian.PutUint64(r[16:], simUVABase+gpa)
		binary.LittleEndian.PutUint64(r[24:], gpa) // mmap offset in the memfd
	}
	return p
}

// setup negotiates features and starts the three rings, as QEMU 7.2 does
// for vhost-user-vsock: init, then vhost_dev_start.
func (g *simGuest) setup() {
	g.t.Helper()
	g.send(reqGetFeatures, 0, nil)
	if f := binary.LittleEndian.Uint64(g.reply(reqGetFeatures)); f != offeredFeatures {
		g.t.Fatalf("features %#x", f)
	}
	g.send(reqGetProtocolFeatures, 0, nil)
	pf := binary.LittleEndian.Uint64(g.reply(reqGetProtocolFeatures))
	if pf&protoConfig == 0 || pf&protoReplyAck == 0 {
		g.t.Fatalf("protocol features %#x lack CONFIG or REPLY_ACK", pf)
	}
	g.send(reqSetProtocolFeatures, 0, u64Bytes(protoConfig|protoReplyAck))
	g.mustCall(reqSetOwner, nil)
	g.send(reqGetConfig, 0, append(vringState(0, 8), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
	cfg := g.reply(reqGetConfig)
	if len(cfg) != 20 || binary.LittleEndian.Uint64(cfg[12:]) != simGuestCID {
		g.t.Fatalf("GET_CONFIG reply %x, want guest CID %d", cfg, simGuestCID)
	}
	g.mustCall(reqSetFeatures, u64Bytes(featureVersion1|featureProtocolFeatures))
	g.mustCall(reqSetMemTable, g.memTable(), g.memfd, g.memfd)
	for _, q := range g.q {
		g.mustCall(reqSetVringNum, vringState(uint32(q.idx), simQSize))
		g.mustCall(reqSetVringBase, vringState(uint32(q.idx), 0))
		addr := make([]byte, 40)
		binary.LittleEndian.PutUint32(addr, uint32(q.idx))
		binary.LittleEndian.PutUint64(addr[8:], simUVABase+q.desc())
		binary.LittleEndian.PutUint64(addr[16:], simUVABase+q.used())
		binary.LittleEndian.PutUint64(addr[24:], simUVABase+q.avail())
		g.mustCall(reqSetVringAddr, addr)
		g.mustCall(reqSetVringKick, u64Bytes(uint64(q.idx)), q.kick)
		g.mustCall(reqSetVringCall, u64Bytes(uint64(q.idx)), q.call)
		g.mustCall(reqSetVringEnable, vringState(uint32(q.idx), 1))
	}
}

// --- the guest driver ---

func (g *simGuest) putDesc(q *simQueue, i uint16, addr uint64, n uint32, flags, next uint16) {
	d := g.mem[q.desc()+uint64(i)*descSize:]
	binary.LittleEndian.PutUint64(d[0:], addr)
	binary.LittleEndian.PutUint32(d[8:], n)
	binary.LittleEndian.PutUint16(d[12:], flags)
	binary.LittleEndian.PutUint16(d[14:], next)
}

// makeAvail publishes head in q's avail ring (flags 0: we want interrupts).
func (g *simGuest) makeAvail(q *simQueue, head uint16) {
	binary.LittleEndian.PutUint16(g.mem[q.avail()+ringHeaderBytes+2*uint64(q.availIdx%simQSize):], head)
	q.availIdx++
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&g.mem[q.avail()])), uint32(q.availIdx)<<16)
}

func (g *simGuest) kick(q *simQueue) {
	var one = [8]byte{1}
	unix.Write(q.kick, one[:])
}

// nextUsed returns q's next used element, waiting up to d for it.
func (g *simGuest) nextUsed(q *simQueue, d time.Duration) (id, n uint32, ok bool) {
	deadline := time.Now().Add(d)
	for {
		v := atomic.LoadUint32((*uint32)(unsafe.Pointer(&g.mem[q.used()])))
		if uint16(v>>16) != q.seen {
			e := g.mem[q.used()+ringHeaderBytes+usedElemSize*uint64(q.seen%simQSize):]
			q.seen++
			return binary.LittleEndian.Uint32(e), binary.LittleEndian.Uint32(e[4:]), true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return 0, 0, false
		}
		fds := []unix.PollFd{{Fd: int32(q.call), Events: unix.POLLIN}}
		unix.Poll(fds, int(min(left, 50*time.Millisecond)/time.Millisecond)+1)
		var buf [8]byte
		unix.Read(q.call, buf[:])
	}
}

func rxBuf(i uint16) uint64 { return simRxBufBase + uint64(i)*0x1100 }

func (g *simGuest) fillRx() {
	q := g.q[rxQueue]
	for i := uint16(0); i < simQSize; i++ {
		g.putDesc(q, i, rxBuf(i), simRxBufSize, descFWrite, 0)
		g.makeAvail(q, i)
	}
	g.kick(q)
}

// recv returns the next packet the backend put in the rx queue, reposting
// its buffer; ok is false after d without one.
func (g *simGuest) recv(d time.Duration) (pktHdr, []byte, bool) {
	g.t.Helper()
	q := g.q[rxQueue]
	id, n, ok := g.nextUsed(q, d)
	if !ok {
		return pktHdr{}, nil, false
	}
	buf := g.mem[rxBuf(uint16(id)) : rxBuf(uint16(id))+simRxBufSize]
	var h pktHdr
	h.decode(buf)
	if n != pktHdrSize+h.len || h.len > simRxBufSize-pktHdrSize {
		g.t.Fatalf("rx used len %d for a packet of %d bytes", n, h.len)
	}
	payload := append([]byte(nil), buf[pktHdrSize:pktHdrSize+h.len]...)
	g.makeAvail(q, uint16(id))
	g.kick(q)
	return h, payload, true
}

func (g *simGuest) mustRecv() (pktHdr, []byte) {
	g.t.Helper()
	h, p, ok := g.recv(10 * time.Second)
	if !ok {
		g.t.Fatal("no packet from the backend within 10s")
	}
	return h, p
}

// reclaimTx frees tx slots the backend has consumed.
func (g *simGuest) reclaimTx(d time.Duration) bool {
	q := g.q[txQueue]
	id, _, ok := g.nextUsed(q, d)
	if ok {
		q.txFree[id/2] = true
	}
	return ok
}

// xmit puts one packet on the tx queue: a header descriptor chained to a
// payload descriptor.
func (g *simGuest) xmit(h pktHdr, payload []byte) {
	g.t.Helper()
	q := g.q[txQueue]
	if len(payload) > simTxPayMax {
		g.t.Fatalf("payload of %d bytes", len(payload))
	}
	slot := -1
	for slot < 0 {
		for i, free := range q.txFree {
			if free {
				slot = i
				break
			}
		}
		if slot < 0 && !g.reclaimTx(5*time.Second) {
			g.t.Fatal("tx queue full and nothing consumed")
		}
	}
	q.txFree[slot] = false
	for g.reclaimTx(0) {
	}
	h.srcCID, h.dstCID, h.typ, h.len = simGuestCID, HostCID, typeStream, uint32(len(payload))
	if h.bufAlloc == 0 {
		h.bufAlloc = simGuestBuf
	}
	hdrAddr := simTxHdrBase + uint64(slot)*64
	h.encode(g.mem[hdrAddr:])
	head := uint16(2 * slot)
	if len(payload) == 0 {
		g.putDesc(q, head, hdrAddr, pktHdrSize, 0, 0)
	} else {
		payAddr := simTxPayBase + uint64(slot)*simTxPayMax
		copy(g.mem[payAddr:], payload)
		g.putDesc(q, head, hdrAddr, pktHdrSize, descFNext, head+1)
		g.putDesc(q, head+1, payAddr, uint32(len(payload)), 0, 0)
	}
	g.makeAvail(q, head)
	g.kick(q)
}

// flushTx waits until the backend has consumed every packet put on the tx
// queue (it returns a chain after handling its packet).
func (g *simGuest) flushTx() {
	g.t.Helper()
	q := g.q[txQueue]
	for {
		busy := false
		for _, free := range q.txFree {
			busy = busy || !free
		}
		if !busy {
			return
		}
		if !g.reclaimTx(10 * time.Second) {
			g.t.Fatal("tx packets not consumed within 10s")
		}
	}
}

// hybridDial connects a host client and sends CONNECT port.
func hybridDial(t *testing.T, path string, port uint32) (*net.UnixConn, *bufio.Reader) {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write([]byte("CONNECT " + itoa(port) + "\n")); err != nil {
		t.Fatal(err)
	}
	return c, bufio.NewReaderSize(oneByte{c}, 16)
}

type oneByte struct{ c net.Conn }

func (o oneByte) Read(p []byte) (int, error) { return o.c.Read(p[:1]) }

func itoa(v uint32) string {
	var b [10]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			return string(b[i:])
		}
	}
}

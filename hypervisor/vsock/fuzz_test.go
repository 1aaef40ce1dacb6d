package vsock

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"unsafe"
)

// Fuzz targets for everything that parses what the guest (or the
// front-end) writes: descriptor chains in the rings, vsock packets and the
// stream state machine they drive, and vhost-user messages. Guest memory
// is Go memory here; nothing is mapped. Seed corpora are in
// testdata/fuzz/<target>/ (TestWriteFuzzSeeds writes them).

// Fake guest memory: two regions, not adjacent, as the simulator has.
const (
	fuzzRegion0    = 64 << 10
	fuzzRegion1GPA = 1 << 20
	fuzzRegion1    = 16 << 10
	fuzzUVA        = 0x7f0000000000
)

func fakeMemory() memory {
	return memory{regions: []memRegion{
		{gpa: 0, size: fuzzRegion0, uva: fuzzUVA, data: make([]byte, fuzzRegion0)},
		{gpa: fuzzRegion1GPA, size: fuzzRegion1, uva: fuzzUVA + fuzzRegion1GPA, data: make([]byte, fuzzRegion1)},
	}}
}

// reusedMemory is fakeMemory, zeroed, allocated once per process: a fuzz
// target runs one input at a time.
var reusedMemory memory

func zeroedMemory() memory {
	if reusedMemory.regions == nil {
		reusedMemory = fakeMemory()
	}
	for _, r := range reusedMemory.regions {
		clear(r.data)
	}
	return reusedMemory
}

// inMemory reports whether buf lies inside one of mem's regions.
func inMemory(mem *memory, buf []byte) bool {
	if len(buf) == 0 {
		return true
	}
	p := uintptr(unsafe.Pointer(unsafe.SliceData(buf)))
	for _, r := range mem.regions {
		base := uintptr(unsafe.Pointer(unsafe.SliceData(r.data)))
		if p >= base && p+uintptr(len(buf)) <= base+uintptr(len(r.data)) {
			return true
		}
	}
	return false
}

// Virtqueue layout in region 0 for FuzzVirtqueuePop.
const (
	fuzzAvail = 0x0000
	fuzzDesc  = 0x0400 // up to 256 descriptors
	fuzzUsed  = 0x1400
)

// FuzzVirtqueuePop feeds the device arbitrary descriptor tables and avail
// rings. Input: ring size (log2), the device's next avail index, the
// guest's avail idx, 8 avail ring entries from there on, then the
// descriptor table.
func FuzzVirtqueuePop(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 21 {
			return
		}
		mem := zeroedMemory()
		ram := mem.regions[0].data
		size := uint16(1) << (data[0] % 9) // 1..256
		vq := newVring()
		vq.size = size
		vq.lastAvail = binary.LittleEndian.Uint16(data[1:])
		availIdx := binary.LittleEndian.Uint16(data[3:])
		binary.LittleEndian.PutUint16(ram[fuzzAvail+2:], availIdx)
		for i := 0; i < 8; i++ {
			slot := (vq.lastAvail + uint16(i)) % size
			copy(ram[fuzzAvail+ringHeaderBytes+2*int(slot):], data[5+2*i:7+2*i])
		}
		copy(ram[fuzzDesc:fuzzDesc+int(size)*descSize], data[21:])
		vq.descAddr, vq.availAddr, vq.usedAddr = fuzzUVA+fuzzDesc, fuzzUVA+fuzzAvail, fuzzUVA+fuzzUsed
		if err := vq.mapRings(&mem); err != nil {
			t.Fatal(err)
		}
		vq.started, vq.enabled = true, true
		for i := 0; i < 9; i++ {
			before := vq.lastAvail
			ch, ok, err := vq.pop(&mem)
			if err != nil || !ok {
				return
			}
			if vq.lastAvail != before+1 {
				t.Fatalf("avail index %d → %d", before, vq.lastAvail)
			}
			if n := len(ch.readable) + len(ch.writable); n == 0 || n > int(size) {
				t.Fatalf("chain of %d descriptors on a %d-entry ring", n, size)
			}
			if ch.head >= size {
				t.Fatalf("head %d on a %d-entry ring", ch.head, size)
			}
			total := 0
			for _, buf := range append(ch.readable, ch.writable...) {
				if !inMemory(&mem, buf) {
					t.Fatalf("a %d-byte buffer outside guest memory", len(buf))
				}
				total += len(buf)
			}
			// Copying in and out stays within the buffers.
			scratch := make([]byte, min(total, 1<<16))
			gather(scratch, ch.readable, 0)
			scatter(ch.writable, pktHdrSize, scratch)
			used := vq.usedIdx
			vq.push(ch.head, uint32(ch.writableLen()))
			if got := binary.LittleEndian.Uint16(ram[fuzzUsed+2:]); got != used+1 {
				t.Fatalf("used idx %d after push, want %d", got, used+1)
			}
		}
	})
}

// splitBufs cuts data into up to three buffers at the given points, as a
// descriptor chain may.
func splitBufs(data []byte, cut1, cut2 uint16) [][]byte {
	a, b := min(int(cut1), len(data)), min(int(cut2), len(data))
	if a > b {
		a, b = b, a
	}
	return [][]byte{data[:a], data[a:b], data[b:]}
}

// FuzzParsePacket parses a guest packet laid out over up to three buffers.
func FuzzParsePacket(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte, cut1, cut2 uint16) {
		bufs := splitBufs(data, cut1, cut2)
		h, err := parsePacket(bufs)
		if len(data) < pktHdrSize {
			if err == nil {
				t.Fatalf("a %d-byte packet parsed", len(data))
			}
			return
		}
		var raw [pktHdrSize]byte
		h.encode(raw[:])
		if !bytes.Equal(raw[:], data[:pktHdrSize]) {
			t.Fatalf("header %x decodes and encodes as %x", data[:pktHdrSize], raw)
		}
		if err != nil {
			return
		}
		if h.len > maxPktPayload || pktHdrSize+int(h.len) > len(data) {
			t.Fatalf("accepted a packet claiming %d bytes in %d", h.len, len(data))
		}
		payload := make([]byte, h.len)
		if n := gather(payload, bufs, pktHdrSize); n != int(h.len) || !bytes.Equal(payload, data[pktHdrSize:pktHdrSize+int(h.len)]) {
			t.Fatalf("gathered %d bytes of a %d-byte payload", n, h.len)
		}
	})
}

// newFuzzBackend is a backend without sockets: guest REQUESTs dial a host
// socket that cannot exist, and at most 8 streams may be open.
func newFuzzBackend() *Backend {
	return newBackendState(Config{
		VhostUserSocket: "/nonexistent/vhost.sock", HybridSocket: "/nonexistent/vsock.sock",
		GuestCID: simGuestCID, MaxConnections: 8, Logf: func(string, ...any) {},
	})
}

// Ports the stream fuzzer's packets use: two established host-initiated
// streams, and host ports without a listener.
var (
	fuzzGuestPorts = [4]uint32{1024, 1025, 2000, 3000}
	fuzzHostPorts  = [4]uint32{firstHostPort, firstHostPort + 1, 5000, 6000}
)

// FuzzGuestPackets drives the stream state machine with a sequence of
// guest packets and host events, checking after each that the backend's
// accounting matches its queues and stays within every bound. Records:
//
//	0, 1: a guest packet: selector (bits 0-1 guest port, 2-3 host port,
//	      4 datagram type, 5 wrong source CID, 6-7 SHUTDOWN flags), op,
//	      len (u16), fwd_cnt (u16), log2 buf_alloc, then for 0 the
//	      payload (1: len zero bytes, so that a small input can overrun
//	      the credit); the action byte's high bits cut it into buffers
//	2:    the host writes out a stream's oldest chunk of guest data
//	3:    the guest takes a packet into a buffer of n*64 payload bytes
//	4:    the host has n*256+1 bytes for a stream's guest
//	5:    a stream's host end reaches EOF
func FuzzGuestPackets(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		b := newFuzzBackend()
		b.mu.Lock()
		for i := 0; i < 2; i++ {
			c := b.newConn(fuzzHostPorts[i], fuzzGuestPorts[i], true)
			c.state, c.readyClosed, c.peerBufAlloc = connEstablished, true, 64<<10
		}
		b.mu.Unlock()
		defer func() {
			b.mu.Lock()
			b.resetStreams()
			b.mu.Unlock()
			b.wg.Wait() // guest REQUESTs' dials
		}()
		// stream picks one of the open streams; b.mu is held.
		stream := func(sel byte) *conn {
			keys := make([]connKey, 0, len(b.conns))
			for k := range b.conns {
				keys = append(keys, k)
			}
			if len(keys) == 0 {
				return nil
			}
			sort.Slice(keys, func(i, j int) bool {
				return keys[i].local < keys[j].local || keys[i].local == keys[j].local && keys[i].peer < keys[j].peer
			})
			return b.conns[keys[int(sel)%len(keys)]]
		}
		// step runs one record with b.mu held (released also when it panics
		// or fails, so that the cleanup above cannot deadlock).
		step := func(act, arg byte) error {
			b.mu.Lock()
			defer b.mu.Unlock()
			switch act % 6 {
			case 0, 1:
				if len(data) < 6 {
					data = nil
					return nil
				}
				sel := arg
				h := pktHdr{
					srcCID: simGuestCID, dstCID: HostCID, typ: typeStream,
					srcPort: fuzzGuestPorts[sel&3], dstPort: fuzzHostPorts[sel>>2&3],
					op: uint16(data[0]), flags: uint32(sel >> 6),
					len:      uint32(binary.LittleEndian.Uint16(data[1:])),
					fwdCnt:   uint32(binary.LittleEndian.Uint16(data[3:])),
					bufAlloc: uint32(1) << (data[5] % 32),
				}
				data = data[6:]
				if sel&0x10 != 0 {
					h.typ = 2
				}
				if sel&0x20 != 0 {
					h.srcCID = simGuestCID + 1
				}
				n := int(h.len)
				if act%6 == 0 {
					n = min(n, len(data))
				}
				pkt := make([]byte, pktHdrSize+n)
				h.encode(pkt)
				if act%6 == 0 {
					copy(pkt[pktHdrSize:], data[:n])
					data = data[n:]
				}
				b.receive(splitBufs(pkt, uint16(act>>3)*4, pktHdrSize+uint16(act>>3)*64))
			case 2:
				if c := stream(arg); c != nil && len(c.inbound) > 0 {
					b.forwarded(c, len(c.popInbound()))
				}
			case 3:
				if len(b.sendq) > 0 {
					h, p := b.nextOut(int(arg) * 64)
					if int(h.len) != len(p) || len(p) > int(arg)*64 {
						return fmt.Errorf("a %d-byte packet of %d bytes for a %d-byte buffer", h.len, len(p), int(arg)*64)
					}
				}
			case 4:
				if c := stream(arg); c != nil {
					if n := b.reserveOut(c, true); n > 0 {
						m := min(n, int(act>>3)*256+1)
						b.releaseOut(n - m)
						c.txCnt += uint32(m)
						b.enqueueData(c, make([]byte, m))
					}
				}
			case 5:
				if c := stream(arg); c != nil && c.state == connEstablished && !c.localShutSend {
					c.localShutSend = true
					b.send(c, opShutdown, shutdownSend)
					b.maybeFinish(c)
				}
			}
			return b.checkAccounting()
		}
		for len(data) >= 2 {
			act, arg := data[0], data[1]
			data = data[2:]
			if err := step(act, arg); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// FuzzVhostUserMessages runs a sequence of vhost-user messages, as a
// front-end would send them, against a backend whose guest memory is Go
// memory, and lets the device process its rings after each. Input: the
// length of the message stream (u16), the messages (12-byte header and
// payload each), then the initial contents of guest memory region 0.
// Descriptors cannot be passed, so SET_MEM_TABLE always fails and kick,
// call and err must come with VHOST_USER_VRING_NOFD_MASK.
func FuzzVhostUserMessages(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 2 {
			return
		}
		n := min(int(binary.LittleEndian.Uint16(data)), len(data)-2)
		msgs, fill := data[2:2+n], data[2+n:]
		b := newFuzzBackend()
		b.mem = zeroedMemory()
		copy(b.mem.regions[0].data, fill)
		defer func() {
			b.mu.Lock()
			b.resetDevice()
			b.mu.Unlock()
			b.wg.Wait()
		}()
		// process lets the device work its rings and checks it, with b.mu
		// held (released also when it panics, so that the cleanup above
		// cannot deadlock).
		process := func() error {
			b.mu.Lock()
			defer b.mu.Unlock()
			b.processTX()
			b.processRX()
			for i := range b.vqs {
				vq := &b.vqs[i]
				for _, ring := range [][]byte{vq.desc, vq.avail, vq.used} {
					if !inMemory(&b.mem, ring) {
						return errRingOutside
					}
				}
			}
			return b.checkAccounting()
		}
		for len(msgs) >= hdrSize {
			req, flags, size, err := parseMsgHeader(msgs)
			if err != nil {
				return // the session ends
			}
			msgs = msgs[hdrSize:]
			if int(size) > len(msgs) {
				return // a short read ends it too
			}
			m := &message{req: req, flags: flags, payload: msgs[:size]}
			msgs = msgs[size:]
			reply, hasReply, herr := b.handleMessage(m)
			if hasReply && herr == nil && len(reply) > hdrSize+maxPayload {
				t.Fatalf("%s: a %d-byte reply", reqName(req), len(reply))
			}
			if len(m.fds) != 0 {
				t.Fatalf("%s: descriptors appeared", reqName(req))
			}
			if err := process(); err != nil {
				t.Fatalf("after %s: %v", reqName(req), err)
			}
		}
	})
}

var errRingOutside = errorString("a ring lies outside guest memory")

type errorString string

func (e errorString) Error() string { return string(e) }

// --- seed corpora ---

// TestWriteFuzzSeeds writes the seed corpora under testdata/fuzz when
// VSOCK_WRITE_FUZZ_SEEDS=1 (go test -run TestWriteFuzzSeeds ./hypervisor/vsock).
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("VSOCK_WRITE_FUZZ_SEEDS") != "1" {
		t.Skip("set VSOCK_WRITE_FUZZ_SEEDS=1 to write testdata/fuzz")
	}
	write := func(target, name string, args ...any) {
		var b strings.Builder
		b.WriteString("go test fuzz v1\n")
		for _, a := range args {
			switch a := a.(type) {
			case []byte:
				fmt.Fprintf(&b, "[]byte(%s)\n", strconv.Quote(string(a)))
			case uint16:
				fmt.Fprintf(&b, "uint16(%d)\n", a)
			default:
				t.Fatalf("seed argument %T", a)
			}
		}
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// FuzzVirtqueuePop.
	type d struct {
		addr  uint64
		n     uint32
		flags uint16
		next  uint16
	}
	ring := func(log2 byte, last, idx uint16, avail []uint16, descs ...d) []byte {
		p := []byte{log2, byte(last), byte(last >> 8), byte(idx), byte(idx >> 8)}
		for i := 0; i < 8; i++ {
			var e uint16
			if i < len(avail) {
				e = avail[i]
			}
			p = binary.LittleEndian.AppendUint16(p, e)
		}
		for _, x := range descs {
			p = binary.LittleEndian.AppendUint64(p, x.addr)
			p = binary.LittleEndian.AppendUint32(p, x.n)
			p = binary.LittleEndian.AppendUint16(p, x.flags)
			p = binary.LittleEndian.AppendUint16(p, x.next)
		}
		return p
	}
	write("FuzzVirtqueuePop", "tx-and-rx-chains", ring(3, 0, 2, []uint16{0, 2},
		d{0x2000, pktHdrSize, descFNext, 1}, d{0x2100, 100, 0, 0},
		d{fuzzRegion1GPA, simRxBufSize, descFWrite, 0}))
	write("FuzzVirtqueuePop", "readable-after-writable", ring(2, 0, 1, []uint16{0},
		d{0x3000, 64, descFWrite | descFNext, 1}, d{0x3100, 64, 0, 0}))
	write("FuzzVirtqueuePop", "loop", ring(2, 0, 1, []uint16{1},
		d{0x3000, 64, 0, 0}, d{0x3000, 64, descFNext, 2}, d{0x3000, 64, descFNext, 1}))
	write("FuzzVirtqueuePop", "across-regions", ring(1, 0, 1, []uint16{0},
		d{fuzzRegion0 - 16, 32, 0, 0}))
	write("FuzzVirtqueuePop", "indirect", ring(1, 0, 1, []uint16{0},
		d{0x3000, 32, descFIndirect, 0}))
	write("FuzzVirtqueuePop", "index-wraps", ring(4, 0xfffe, 0x0001, []uint16{3, 4, 5},
		d{}, d{}, d{}, d{0x4000, 8, 0, 0}, d{0x4000, 0, descFWrite, 0}, d{0x4000, 4096, descFWrite, 0}))
	write("FuzzVirtqueuePop", "too-far-ahead", ring(2, 0, 9, []uint16{0}, d{0x3000, 8, 0, 0}))

	// FuzzParsePacket.
	pkt := func(h pktHdr, payload string) []byte {
		p := make([]byte, pktHdrSize, pktHdrSize+len(payload))
		h.srcCID, h.dstCID, h.typ = simGuestCID, HostCID, typeStream
		h.encode(p)
		return append(p, payload...)
	}
	write("FuzzParsePacket", "request", pkt(pktHdr{srcPort: 40000, dstPort: 1024, op: opRequest, bufAlloc: 1 << 18}, ""), uint16(0), uint16(0))
	write("FuzzParsePacket", "rw-split", pkt(pktHdr{srcPort: 40000, dstPort: 1024, op: opRW, len: 5, bufAlloc: 1 << 18}, "hello"), uint16(pktHdrSize), uint16(pktHdrSize+2))
	write("FuzzParsePacket", "header-split", pkt(pktHdr{srcPort: 1, dstPort: 2, op: opCreditUpdate, fwdCnt: 99}, ""), uint16(10), uint16(30))
	write("FuzzParsePacket", "len-beyond-buffer", pkt(pktHdr{op: opRW, len: 100}, "short"), uint16(0), uint16(0))
	write("FuzzParsePacket", "len-beyond-max", pkt(pktHdr{op: opRW, len: maxPktPayload + 1}, ""), uint16(0), uint16(0))
	write("FuzzParsePacket", "short", []byte("not a header"), uint16(3), uint16(7))

	// FuzzGuestPackets: records as its comment describes.
	gp := func(act, sel, op byte, n, fwd uint16, allocLog2 byte, payload string) []byte {
		p := []byte{act, sel, op}
		p = binary.LittleEndian.AppendUint16(p, n)
		p = binary.LittleEndian.AppendUint16(p, fwd)
		return append(append(p, allocLog2), payload...)
	}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	write("FuzzGuestPackets", "data-both-ways", cat(
		gp(0, 0x00, opRW, 5, 0, 16, "hello"),
		[]byte{2, 0}, // the host writes it out
		[]byte{4, 0}, // the host answers
		[]byte{3, 64}, []byte{3, 64}, []byte{3, 64},
		gp(0, 0x00, opCreditUpdate, 0, 1, 16, ""),
	))
	write("FuzzGuestPackets", "credit-overrun", cat(
		gp(1, 0x00, opRW, 65535, 0, 16, ""), gp(1, 0x00, opRW, 65535, 0, 16, ""),
		gp(1, 0x00, opRW, 65535, 0, 16, ""), gp(1, 0x00, opRW, 65535, 0, 16, ""),
		gp(1, 0x00, opRW, 65535, 0, 16, ""),
		[]byte{3, 1}, []byte{3, 1},
	))
	write("FuzzGuestPackets", "within-credit-while-draining", cat(
		gp(1, 0x01, opRW, 65535, 0, 16, ""), []byte{2, 1}, []byte{2, 1},
		gp(1, 0x01, opRW, 65535, 0, 16, ""), gp(1, 0x01, opRW, 65535, 0, 16, ""),
		gp(1, 0x01, opRW, 65535, 0, 16, ""), []byte{2, 1}, []byte{2, 1}, []byte{2, 1},
		gp(1, 0x01, opRW, 65535, 0, 16, ""), []byte{3, 255},
	))
	write("FuzzGuestPackets", "requests-and-garbage", cat(
		gp(0, 0x08, opRequest, 0, 0, 18, ""), gp(0, 0x0e, opRequest, 0, 0, 18, ""),
		gp(0, 0x0a, opRW, 3, 0, 18, "abc"), gp(0, 0x10, opRW, 0, 0, 18, ""),
		gp(0, 0x20, opRequest, 0, 0, 18, ""), gp(0, 0x00, 42, 0, 0, 18, ""),
		gp(0, 0x01, opCreditRequest, 0, 0, 18, ""), gp(0, 0x01, opCreditRequest, 0, 0, 18, ""),
		gp(0, 0xc1, opShutdown, 0, 0, 18, ""), gp(0, 0x00, opResponse, 0, 0, 18, ""),
		[]byte{3, 1}, []byte{3, 1}, []byte{3, 1}, []byte{3, 1},
	))
	write("FuzzGuestPackets", "host-data-and-eof", cat(
		[]byte{4 + 6*40, 0}, []byte{4 + 6*40, 0}, []byte{4 + 6*40, 1},
		[]byte{3, 2}, []byte{3, 255}, []byte{5, 0},
		gp(0, 0xc0, opShutdown, 0, 0, 18, ""), []byte{3, 255}, []byte{3, 255},
		gp(0, 0x00, opRst, 0, 0, 18, ""), gp(0, 0x01, opRst, 0, 0, 18, ""),
	))

	// FuzzVhostUserMessages: QEMU's set-up of the three rings over guest
	// memory holding a tx chain with a REQUEST and rx buffers.
	msg := func(req uint32, payload []byte) []byte {
		p := binary.LittleEndian.AppendUint32(nil, req)
		p = binary.LittleEndian.AppendUint32(p, flagVersion)
		p = binary.LittleEndian.AppendUint32(p, uint32(len(payload)))
		return append(p, payload...)
	}
	const qsize = 8
	qbase := func(q int) uint64 { return uint64(q) * 0x200 }
	setup := cat(
		msg(reqGetFeatures, nil),
		msg(reqSetFeatures, u64Bytes(featureVersion1|featureProtocolFeatures)),
		msg(reqGetProtocolFeatures, nil),
		msg(reqSetProtocolFeatures, u64Bytes(protoConfig|protoReplyAck)),
		msg(reqSetOwner, nil),
		msg(reqGetConfig, append(vringState(0, 8), make([]byte, 12)...)),
	)
	// rings sets up the three rings; extra goes after the tx ring's address.
	rings := func(extra []byte) []byte {
		var p []byte
		for q := 0; q < numQueues; q++ {
			addr := make([]byte, 40)
			binary.LittleEndian.PutUint32(addr, uint32(q))
			binary.LittleEndian.PutUint64(addr[8:], fuzzUVA+qbase(q))        // desc
			binary.LittleEndian.PutUint64(addr[16:], fuzzUVA+qbase(q)+0x100) // used
			binary.LittleEndian.PutUint64(addr[24:], fuzzUVA+qbase(q)+0x80)  // avail
			p = cat(p,
				msg(reqSetVringNum, vringState(uint32(q), qsize)),
				msg(reqSetVringBase, vringState(uint32(q), 0)),
				msg(reqSetVringAddr, addr),
			)
			if q == txQueue {
				p = cat(p, extra)
			}
			p = cat(p,
				msg(reqSetVringKick, u64Bytes(uint64(q)|vringNoFD)),
				msg(reqSetVringCall, u64Bytes(uint64(q)|vringNoFD)),
				msg(reqSetVringEnable, vringState(uint32(q), 1)),
			)
		}
		return p
	}
	negotiation := setup
	setup = cat(negotiation, rings(nil))
	mem := make([]byte, 0x800)
	putDesc := func(q int, i uint16, addr uint64, n uint32, flags, next uint16) {
		e := mem[qbase(q)+uint64(i)*descSize:]
		binary.LittleEndian.PutUint64(e, addr)
		binary.LittleEndian.PutUint32(e[8:], n)
		binary.LittleEndian.PutUint16(e[12:], flags)
		binary.LittleEndian.PutUint16(e[14:], next)
	}
	avail := func(q int, heads ...uint16) {
		a := mem[qbase(q)+0x80:]
		binary.LittleEndian.PutUint16(a[2:], uint16(len(heads)))
		for i, h := range heads {
			binary.LittleEndian.PutUint16(a[4+2*i:], h)
		}
	}
	for i := uint16(0); i < 4; i++ { // rx buffers
		putDesc(rxQueue, i, fuzzRegion1GPA+uint64(i)*0x800, 0x800, descFWrite, 0)
	}
	avail(rxQueue, 0, 1, 2, 3)
	copy(mem[0x600:], pkt(pktHdr{srcPort: 40000, dstPort: 1024, op: opRequest, bufAlloc: 1 << 18}, ""))
	copy(mem[0x700:], pkt(pktHdr{srcPort: 40001, dstPort: 1024, op: opRW, len: 4}, "ping"))
	putDesc(txQueue, 0, 0x600, pktHdrSize, 0, 0)
	putDesc(txQueue, 1, 0x700, pktHdrSize, descFNext, 2)
	putDesc(txQueue, 2, 0x700+pktHdrSize, 4, 0, 0)
	avail(txQueue, 0, 1)
	seed := func(msgs []byte) []byte {
		return cat(binary.LittleEndian.AppendUint16(nil, uint16(len(msgs))), msgs, mem)
	}
	write("FuzzVhostUserMessages", "qemu-setup", seed(setup))
	// A ring resized after its address was set: the third tx chain's head,
	// 9, is beyond the 8-entry table first mapped.
	avail(txQueue, 0, 1, 9)
	write("FuzzVhostUserMessages", "resize-mapped-ring", seed(cat(negotiation,
		rings(msg(reqSetVringNum, vringState(txQueue, 256))))))
	avail(txQueue, 0, 1, 0)
	avail(txQueue, 0, 1)
	write("FuzzVhostUserMessages", "shrink-mapped-ring", seed(cat(setup,
		msg(reqSetVringNum, vringState(txQueue, 4)),
		msg(reqSetVringBase, vringState(txQueue, 0))),
	))
	write("FuzzVhostUserMessages", "stop-and-reset", seed(cat(setup,
		msg(reqGetVringBase, vringState(rxQueue, 0)),
		msg(reqSetMemTable, make([]byte, 40)),
		msg(reqResetOwner, nil),
		msg(reqSetVringAddr, make([]byte, 40)))),
	)
	write("FuzzVhostUserMessages", "unsupported", seed(cat(
		msg(reqSetLogBase, make([]byte, 16)), msg(36, nil), msg(reqGetConfig, make([]byte, 12)),
		msg(reqSetVringNum, vringState(7, 64)), msg(reqSetVringKick, u64Bytes(1)))),
	)
}

package vsock

import (
	"encoding/binary"
	"fmt"
)

// virtio-vsock packet header (struct virtio_vsock_hdr, virtio 1.2 §5.10.6),
// little-endian, 44 bytes.
const pktHdrSize = 44

// Packet types and operations.
const (
	typeStream = 1

	opRequest       = 1
	opResponse      = 2
	opRst           = 3
	opShutdown      = 4
	opRW            = 5
	opCreditUpdate  = 6
	opCreditRequest = 7

	shutdownRcv  = 1
	shutdownSend = 2
	shutdownBoth = shutdownRcv | shutdownSend
)

// HostCID is the well-known address of the host (VMADDR_CID_HOST).
const HostCID = 2

// maxPktPayload is the most a guest may put in one packet (Linux's
// VIRTIO_VSOCK_MAX_PKT_BUF_SIZE); anything larger is a broken guest.
const maxPktPayload = 64 << 10

var opNames = [...]string{"INVALID", "REQUEST", "RESPONSE", "RST", "SHUTDOWN", "RW", "CREDIT_UPDATE", "CREDIT_REQUEST"}

func opName(op uint16) string {
	if int(op) < len(opNames) {
		return opNames[op]
	}
	return "op?"
}

type pktHdr struct {
	srcCID, dstCID   uint64
	srcPort, dstPort uint32
	len              uint32
	typ, op          uint16
	flags            uint32
	bufAlloc, fwdCnt uint32
}

func (h *pktHdr) decode(b []byte) {
	h.srcCID = binary.LittleEndian.Uint64(b[0:])
	h.dstCID = binary.LittleEndian.Uint64(b[8:])
	h.srcPort = binary.LittleEndian.Uint32(b[16:])
	h.dstPort = binary.LittleEndian.Uint32(b[20:])
	h.len = binary.LittleEndian.Uint32(b[24:])
	h.typ = binary.LittleEndian.Uint16(b[28:])
	h.op = binary.LittleEndian.Uint16(b[30:])
	h.flags = binary.LittleEndian.Uint32(b[32:])
	h.bufAlloc = binary.LittleEndian.Uint32(b[36:])
	h.fwdCnt = binary.LittleEndian.Uint32(b[40:])
}

func (h *pktHdr) encode(b []byte) {
	binary.LittleEndian.PutUint64(b[0:], h.srcCID)
	binary.LittleEndian.PutUint64(b[8:], h.dstCID)
	binary.LittleEndian.PutUint32(b[16:], h.srcPort)
	binary.LittleEndian.PutUint32(b[20:], h.dstPort)
	binary.LittleEndian.PutUint32(b[24:], h.len)
	binary.LittleEndian.PutUint16(b[28:], h.typ)
	binary.LittleEndian.PutUint16(b[30:], h.op)
	binary.LittleEndian.PutUint32(b[32:], h.flags)
	binary.LittleEndian.PutUint32(b[36:], h.bufAlloc)
	binary.LittleEndian.PutUint32(b[40:], h.fwdCnt)
}

// parsePacket decodes the header of a guest packet laid out over bufs (a tx
// chain's readable buffers) and checks that the payload it claims is there
// and within maxPktPayload. The payload is h.len bytes from pktHdrSize on.
func parsePacket(bufs [][]byte) (pktHdr, error) {
	total := 0
	for _, buf := range bufs {
		total += len(buf)
	}
	var h pktHdr
	if total < pktHdrSize {
		return h, fmt.Errorf("%d bytes, less than a header", total)
	}
	var raw [pktHdrSize]byte
	gather(raw[:], bufs, 0)
	h.decode(raw[:])
	if h.len > maxPktPayload || int64(h.len) > int64(total-pktHdrSize) {
		return h, fmt.Errorf("%s claiming %d bytes in a %d-byte buffer", opName(h.op), h.len, total)
	}
	return h, nil
}

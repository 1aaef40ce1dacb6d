package vsock

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"

	"golang.org/x/sys/unix"
)

// vhost-user requests (docs/interop/vhost-user.rst, "Front-end message
// types"). Only those QEMU's vhost-user-vsock sends with the features we
// offer are handled; the rest are answered with a failure when a reply is
// expected.
const (
	reqGetFeatures         = 1
	reqSetFeatures         = 2
	reqSetOwner            = 3
	reqResetOwner          = 4
	reqSetMemTable         = 5
	reqSetLogBase          = 6
	reqSetLogFD            = 7
	reqSetVringNum         = 8
	reqSetVringAddr        = 9
	reqSetVringBase        = 10
	reqGetVringBase        = 11
	reqSetVringKick        = 12
	reqSetVringCall        = 13
	reqSetVringErr         = 14
	reqGetProtocolFeatures = 15
	reqSetProtocolFeatures = 16
	reqGetQueueNum         = 17
	reqSetVringEnable      = 18
	reqGetConfig           = 24
	reqSetConfig           = 25
	reqResetDevice         = 34
)

var reqNames = map[uint32]string{
	reqGetFeatures: "GET_FEATURES", reqSetFeatures: "SET_FEATURES", reqSetOwner: "SET_OWNER",
	reqResetOwner: "RESET_OWNER", reqSetMemTable: "SET_MEM_TABLE", reqSetLogBase: "SET_LOG_BASE",
	reqSetLogFD: "SET_LOG_FD", reqSetVringNum: "SET_VRING_NUM", reqSetVringAddr: "SET_VRING_ADDR",
	reqSetVringBase: "SET_VRING_BASE", reqGetVringBase: "GET_VRING_BASE", reqSetVringKick: "SET_VRING_KICK",
	reqSetVringCall: "SET_VRING_CALL", reqSetVringErr: "SET_VRING_ERR",
	reqGetProtocolFeatures: "GET_PROTOCOL_FEATURES", reqSetProtocolFeatures: "SET_PROTOCOL_FEATURES",
	reqGetQueueNum: "GET_QUEUE_NUM", reqSetVringEnable: "SET_VRING_ENABLE", reqGetConfig: "GET_CONFIG",
	reqSetConfig: "SET_CONFIG", reqResetDevice: "RESET_DEVICE",
}

func reqName(r uint32) string {
	if n, ok := reqNames[r]; ok {
		return n
	}
	return fmt.Sprintf("request %d", r)
}

// Header flags.
const (
	flagVersion   = 0x1
	flagReply     = 1 << 2
	flagNeedReply = 1 << 3
)

// Feature bits.
const (
	// virtio device features offered to the guest. Deliberately absent:
	// VIRTIO_RING_F_EVENT_IDX and VIRTIO_RING_F_INDIRECT_DESC (the queues are
	// simpler without them; vsock's own batching keeps notifications cheap)
	// and VIRTIO_VSOCK_F_SEQPACKET.
	featureVersion1 = uint64(1) << 32
	// featureProtocolFeatures (VHOST_USER_F_PROTOCOL_FEATURES) enables the
	// protocol feature negotiation; rings then start disabled.
	featureProtocolFeatures = uint64(1) << 30
	// featureLogAll is VHOST_F_LOG_ALL (migration dirty logging), never offered.
	featureLogAll = uint64(1) << 26

	// offeredFeatures is what GET_FEATURES answers.
	offeredFeatures = featureVersion1 | featureProtocolFeatures

	// Protocol features: REPLY_ACK (a front-end may ask for an ack of any
	// message) and CONFIG (GET_CONFIG, which QEMU's vhost-user-vsock needs
	// to read the guest CID).
	protoReplyAck = uint64(1) << 3
	protoConfig   = uint64(1) << 9

	offeredProtocolFeatures = protoReplyAck | protoConfig
)

// Limits on what the front-end may send.
const (
	hdrSize        = 12
	maxPayload     = 4096
	maxMemRegions  = 8
	maxFDs         = maxMemRegions
	vringIndexMask = 0xff
	vringNoFD      = 1 << 8
)

// message is one vhost-user message with the descriptors passed along.
type message struct {
	req     uint32
	flags   uint32
	payload []byte
	fds     []int
}

func (m *message) needReply() bool { return m.flags&flagNeedReply != 0 }

// closeFDs closes the descriptors a handler did not take.
func (m *message) closeFDs() {
	for _, fd := range m.fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	m.fds = nil
}

// takeFD returns the first descriptor, which the caller then owns.
func (m *message) takeFD() (int, bool) {
	if len(m.fds) == 0 {
		return -1, false
	}
	fd := m.fds[0]
	m.fds = m.fds[1:]
	return fd, true
}

func (m *message) u64() (uint64, error) {
	if len(m.payload) < 8 {
		return 0, fmt.Errorf("%s: payload of %d bytes, want 8", reqName(m.req), len(m.payload))
	}
	return binary.LittleEndian.Uint64(m.payload), nil
}

// vringState is struct vhost_vring_state: a ring index and a number.
func (m *message) vringState() (index, num uint32, err error) {
	if len(m.payload) < 8 {
		return 0, 0, fmt.Errorf("%s: payload of %d bytes, want 8", reqName(m.req), len(m.payload))
	}
	return binary.LittleEndian.Uint32(m.payload), binary.LittleEndian.Uint32(m.payload[4:]), nil
}

// readMessage reads one message and any descriptors sent with it. Reads
// never cross a message boundary: the header, then exactly its payload.
func readMessage(c *net.UnixConn) (*message, error) {
	var hdr [hdrSize]byte
	m := &message{}
	if err := readFull(c, hdr[:], m); err != nil {
		m.closeFDs()
		return nil, err
	}
	var size uint32
	var err error
	if m.req, m.flags, size, err = parseMsgHeader(hdr[:]); err != nil {
		m.closeFDs()
		return nil, err
	}
	m.payload = make([]byte, size)
	if err := readFull(c, m.payload, m); err != nil {
		m.closeFDs()
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return m, nil
}

// parseMsgHeader decodes and checks a vhost-user message header.
func parseMsgHeader(hdr []byte) (req, flags, size uint32, err error) {
	if len(hdr) < hdrSize {
		return 0, 0, 0, fmt.Errorf("vhost-user: header of %d bytes", len(hdr))
	}
	req = binary.LittleEndian.Uint32(hdr[0:])
	flags = binary.LittleEndian.Uint32(hdr[4:])
	size = binary.LittleEndian.Uint32(hdr[8:])
	if flags&0x3 != flagVersion {
		return 0, 0, 0, fmt.Errorf("vhost-user: %s with version %d, want 1", reqName(req), flags&3)
	}
	if size > maxPayload {
		return 0, 0, 0, fmt.Errorf("vhost-user: %s with a %d-byte payload", reqName(req), size)
	}
	return req, flags, size, nil
}

// readFull fills buf from c, collecting the descriptors that come with it
// in m (at most maxFDs for a message).
func readFull(c *net.UnixConn, buf []byte, m *message) error {
	oob := make([]byte, unix.CmsgSpace(maxFDs*4))
	for got := 0; got < len(buf); {
		n, oobn, _, _, err := c.ReadMsgUnix(buf[got:], oob)
		if oobn > 0 {
			fds, perr := parseRights(oob[:oobn])
			m.fds = append(m.fds, fds...)
			if perr != nil {
				return perr
			}
			if len(m.fds) > maxFDs {
				return fmt.Errorf("vhost-user: more than %d descriptors with a message", maxFDs)
			}
		}
		got += n
		if err != nil {
			if got > 0 && errors.Is(err, io.EOF) {
				return io.ErrUnexpectedEOF
			}
			return err
		}
		if n == 0 {
			return io.EOF
		}
	}
	return nil
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var out []int
	for _, cm := range msgs {
		fds, err := unix.ParseUnixRights(&cm)
		if err != nil {
			continue
		}
		out = append(out, fds...)
	}
	return out, nil
}

// writeReply sends a reply to req carrying payload.
func writeReply(c *net.UnixConn, req uint32, payload []byte) error {
	b := make([]byte, hdrSize+len(payload))
	binary.LittleEndian.PutUint32(b[0:], req)
	binary.LittleEndian.PutUint32(b[4:], flagVersion|flagReply)
	binary.LittleEndian.PutUint32(b[8:], uint32(len(payload)))
	copy(b[hdrSize:], payload)
	_, err := c.Write(b)
	return err
}

func u64Bytes(v uint64) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, v)
	return b
}

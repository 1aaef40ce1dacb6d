package vsock

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
)

// serveSession answers one front-end's messages until it disconnects.
func (b *Backend) serveSession(c *net.UnixConn) error {
	for {
		m, err := readMessage(c)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		reply, hasReply, herr := b.handleMessage(m)
		m.closeFDs()
		if herr != nil {
			b.cfg.Logf("vsock backend: %s: %v", reqName(m.req), herr)
		}
		switch {
		case hasReply && herr == nil:
			err = writeReply(c, m.req, reply)
		case hasReply:
			// A request that needs an answer failed: the front-end cannot
			// go on with a made-up one.
			return herr
		case m.needReply():
			status := uint64(0)
			if herr != nil {
				status = 1
			}
			err = writeReply(c, m.req, u64Bytes(status))
		}
		if err != nil {
			return err
		}
	}
}

// handleMessage applies one message. hasReply says whether the request has
// its own reply (reply); otherwise only REPLY_ACK may answer it.
func (b *Backend) handleMessage(m *message) (reply []byte, hasReply bool, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch m.req {
	case reqGetFeatures:
		return u64Bytes(offeredFeatures), true, nil
	case reqSetFeatures:
		f, err := m.u64()
		if err != nil {
			return nil, false, err
		}
		if extra := f &^ offeredFeatures; extra != 0 {
			return nil, false, fmt.Errorf("features %#x were not offered", extra)
		}
		b.features = f
		if f&featureProtocolFeatures == 0 {
			// Without protocol features a ring is enabled as soon as it starts.
			for i := range b.vqs {
				b.vqs[i].enabled = true
			}
		}
		return nil, false, nil
	case reqGetProtocolFeatures:
		return u64Bytes(offeredProtocolFeatures), true, nil
	case reqSetProtocolFeatures:
		f, err := m.u64()
		if err != nil {
			return nil, false, err
		}
		if extra := f &^ offeredProtocolFeatures; extra != 0 {
			return nil, false, fmt.Errorf("protocol features %#x were not offered", extra)
		}
		b.protoFeatures = f
		return nil, false, nil
	case reqSetOwner:
		return nil, false, nil
	case reqResetOwner, reqResetDevice:
		b.resetDevice()
		return nil, false, nil
	case reqSetMemTable:
		mem, err := parseMemTable(m.payload, m.fds)
		m.fds = nil // parseMemTable closed them
		if err != nil {
			return nil, false, err
		}
		b.mem.unmap()
		b.mem = mem
		for i := range b.vqs {
			if vq := &b.vqs[i]; vq.desc != nil {
				if err := vq.mapRings(&b.mem); err != nil {
					// The old mapping is gone: nothing may point into it.
					vq.unmapRings()
					vq.broken = fmt.Errorf("queue %d after SET_MEM_TABLE: %w", i, err)
				}
			}
		}
		return nil, false, nil
	case reqGetQueueNum:
		return u64Bytes(numQueues), true, nil
	case reqGetConfig:
		return b.getConfig(m.payload)
	case reqSetVringNum, reqSetVringBase, reqSetVringEnable:
		idx, num, err := m.vringState()
		if err != nil {
			return nil, false, err
		}
		vq, err := b.vring(idx)
		if err != nil {
			return nil, false, err
		}
		switch m.req {
		case reqSetVringNum:
			if num == 0 || num > maxQueueSize || num&(num-1) != 0 {
				return nil, false, fmt.Errorf("queue %d: size %d", idx, num)
			}
			vq.size = uint16(num)
			// Rings mapped for another size are mapped again for this
			// one (QEMU sends SET_VRING_ADDR after it anyway).
			if vq.desc != nil {
				if err := vq.mapRings(&b.mem); err != nil {
					vq.unmapRings()
					return nil, false, fmt.Errorf("queue %d: %w", idx, err)
				}
			}
		case reqSetVringBase:
			vq.lastAvail = uint16(num)
		case reqSetVringEnable:
			vq.enabled = num != 0
			b.kick()
		}
		return nil, false, nil
	case reqGetVringBase:
		idx, _, err := m.vringState()
		if err != nil {
			return nil, false, err
		}
		vq, err := b.vring(idx)
		if err != nil {
			return nil, false, err
		}
		// The ring stops: the guest driver is going away (reset, reboot,
		// shutdown), and so are its sockets.
		vq.started = false
		if vq.kick != nil {
			vq.kick.Close()
			vq.kick = nil
		}
		b.resetStreams()
		r := make([]byte, 8)
		binary.LittleEndian.PutUint32(r, idx)
		binary.LittleEndian.PutUint32(r[4:], uint32(vq.lastAvail))
		return r, true, nil
	case reqSetVringAddr:
		if len(m.payload) < 40 {
			return nil, false, fmt.Errorf("payload of %d bytes, want 40", len(m.payload))
		}
		vq, err := b.vring(binary.LittleEndian.Uint32(m.payload))
		if err != nil {
			return nil, false, err
		}
		vq.descAddr = binary.LittleEndian.Uint64(m.payload[8:])
		vq.usedAddr = binary.LittleEndian.Uint64(m.payload[16:])
		vq.availAddr = binary.LittleEndian.Uint64(m.payload[24:])
		vq.broken = nil
		if err := vq.mapRings(&b.mem); err != nil {
			vq.unmapRings()
			return nil, false, err
		}
		// Resume where the used ring is (0 after a driver reset).
		vq.usedIdx = binary.LittleEndian.Uint16(vq.used[2:])
		return nil, false, nil
	case reqSetVringKick, reqSetVringCall, reqSetVringErr:
		u, err := m.u64()
		if err != nil {
			return nil, false, err
		}
		vq, err := b.vring(uint32(u & vringIndexMask))
		if err != nil {
			return nil, false, err
		}
		fd := -1
		if u&vringNoFD == 0 {
			var ok bool
			if fd, ok = m.takeFD(); !ok {
				return nil, false, errors.New("no file descriptor passed")
			}
		}
		switch m.req {
		case reqSetVringKick:
			if vq.kick != nil {
				vq.kick.Close()
				vq.kick = nil
			}
			if fd >= 0 && u&vringIndexMask != eventQueue {
				vq.kick = b.watchKick(fd, fmt.Sprintf("vsock-kick-%d", u&vringIndexMask))
			} else if fd >= 0 {
				// Nothing is ever sent on the event queue; keep the fd only
				// to close it with the ring.
				vq.kick = &eventFile{f: newFile(fd, "vsock-kick-event")}
			}
			vq.started = true
			b.kick()
		case reqSetVringCall:
			swapFD(&vq.callFD, fd)
		case reqSetVringErr:
			swapFD(&vq.errFD, fd)
		}
		return nil, false, nil
	default:
		return nil, m.expectsReply(), fmt.Errorf("not supported")
	}
}

// expectsReply reports whether a request we do not handle would have had
// its own reply, which we cannot make up.
func (m *message) expectsReply() bool {
	switch m.req {
	case 31, 36, 40: // GET_INFLIGHT_FD, GET_MAX_MEM_SLOTS, GET_STATUS
		return true
	}
	return false
}

func (b *Backend) vring(idx uint32) (*vring, error) {
	if idx >= numQueues {
		return nil, fmt.Errorf("queue %d: a vsock device has %d", idx, numQueues)
	}
	return &b.vqs[idx], nil
}

// getConfig answers GET_CONFIG with struct virtio_vsock_config: the guest
// CID as a little-endian u64.
func (b *Backend) getConfig(p []byte) ([]byte, bool, error) {
	if len(p) < 12 {
		return nil, true, fmt.Errorf("GET_CONFIG: payload of %d bytes", len(p))
	}
	off := binary.LittleEndian.Uint32(p)
	size := binary.LittleEndian.Uint32(p[4:])
	if size > 256 || off > 256 {
		return nil, true, fmt.Errorf("GET_CONFIG: %d bytes at offset %d", size, off)
	}
	var cfg [8]byte
	binary.LittleEndian.PutUint64(cfg[:], b.cfg.GuestCID)
	r := make([]byte, 12+size)
	copy(r, p[:12])
	if off < uint32(len(cfg)) {
		copy(r[12:], cfg[off:])
	}
	return r, true, nil
}

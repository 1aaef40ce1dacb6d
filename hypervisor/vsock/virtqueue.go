package vsock

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Split virtqueue layout (virtio 1.1 §2.6).
const (
	descSize        = 16
	descFNext       = 1
	descFWrite      = 2
	descFIndirect   = 4
	availFNoIntr    = 1
	maxQueueSize    = 32768
	usedElemSize    = 8
	ringHeaderBytes = 4 // flags + idx of the avail and used rings
)

// vring is the device side of one split virtqueue. All fields are guarded
// by the device's mutex.
type vring struct {
	size                          uint16
	descAddr, availAddr, usedAddr uint64 // front-end virtual addresses
	desc, avail, used             []byte // mapped ring areas; nil until set

	lastAvail uint16 // next avail ring entry to consume
	usedIdx   uint16 // our copy of used->idx

	kick    *eventFile // the guest's notifications; nil when unset
	callFD  int        // interrupts to the guest; -1 when unset
	errFD   int        // -1 when unset
	enabled bool       // SET_VRING_ENABLE (or no protocol features)
	started bool       // SET_VRING_KICK seen and not stopped by GET_VRING_BASE
	broken  error      // the guest corrupted the ring; no more processing
}

func newVring() vring { return vring{callFD: -1, errFD: -1} }

// ready reports whether the device may process the ring.
func (vq *vring) ready() bool {
	return vq.started && vq.enabled && vq.broken == nil && vq.desc != nil
}

// mapRings resolves the ring addresses in mem.
func (vq *vring) mapRings(mem *memory) error {
	if vq.size == 0 {
		return errors.New("ring size not set")
	}
	n := uint64(vq.size)
	desc, err := mem.uva(vq.descAddr, n*descSize)
	if err != nil {
		return fmt.Errorf("descriptor table: %w", err)
	}
	avail, err := mem.uva(vq.availAddr, ringHeaderBytes+2*n+2)
	if err != nil {
		return fmt.Errorf("available ring: %w", err)
	}
	used, err := mem.uva(vq.usedAddr, ringHeaderBytes+usedElemSize*n+2)
	if err != nil {
		return fmt.Errorf("used ring: %w", err)
	}
	if uintptr(unsafe.Pointer(&avail[0]))%4 != 0 || uintptr(unsafe.Pointer(&used[0]))%4 != 0 {
		return errors.New("rings are not 4-byte aligned")
	}
	vq.desc, vq.avail, vq.used = desc, avail, used
	return nil
}

func (vq *vring) unmapRings() { vq.desc, vq.avail, vq.used = nil, nil, nil }

// availHeader reads the avail ring's flags and idx in one atomic load: the
// guest writes them concurrently.
func (vq *vring) availHeader() (flags, idx uint16) {
	v := atomic.LoadUint32((*uint32)(unsafe.Pointer(&vq.avail[0])))
	return uint16(v), uint16(v >> 16) // little-endian host (x86-64)
}

// chain is one descriptor chain taken from the avail ring: the buffers the
// guest lets us read, then those we may write.
type chain struct {
	head     uint16
	readable [][]byte
	writable [][]byte
}

func (c *chain) writableLen() int {
	n := 0
	for _, b := range c.writable {
		n += len(b)
	}
	return n
}

// pop takes the next chain the guest made available, if any.
func (vq *vring) pop(mem *memory) (chain, bool, error) {
	_, idx := vq.availHeader()
	if idx == vq.lastAvail {
		return chain{}, false, nil
	}
	if uint16(idx-vq.lastAvail) > vq.size {
		return chain{}, false, fmt.Errorf("avail idx %d is %d entries ahead of %d on a %d-entry ring", idx, idx-vq.lastAvail, vq.lastAvail, vq.size)
	}
	slot := uint64(vq.lastAvail % vq.size)
	head := binary.LittleEndian.Uint16(vq.avail[ringHeaderBytes+2*slot:])
	vq.lastAvail++
	c := chain{head: head}
	i := head
	for n := 0; ; n++ {
		if i >= vq.size || n >= int(vq.size) {
			return chain{}, false, fmt.Errorf("descriptor chain from %d: index %d out of range or loop", head, i)
		}
		d := vq.desc[uint64(i)*descSize:]
		addr := binary.LittleEndian.Uint64(d[0:])
		length := binary.LittleEndian.Uint32(d[8:])
		flags := binary.LittleEndian.Uint16(d[12:])
		next := binary.LittleEndian.Uint16(d[14:])
		if flags&descFIndirect != 0 {
			return chain{}, false, errors.New("indirect descriptor, but VIRTIO_RING_F_INDIRECT_DESC was not offered")
		}
		buf, err := mem.gpa(addr, uint64(length))
		if err != nil {
			return chain{}, false, fmt.Errorf("descriptor %d: %w", i, err)
		}
		if flags&descFWrite != 0 {
			c.writable = append(c.writable, buf)
		} else {
			if len(c.writable) > 0 {
				return chain{}, false, fmt.Errorf("descriptor %d: readable after writable", i)
			}
			c.readable = append(c.readable, buf)
		}
		if flags&descFNext == 0 {
			break
		}
		i = next
	}
	return c, true, nil
}

// push returns a chain to the guest with n bytes written into it. The
// element is written before the index that publishes it (x86-64 keeps
// stores in order; the atomic store is also a compiler barrier).
func (vq *vring) push(head uint16, n uint32) {
	slot := uint64(vq.usedIdx % vq.size)
	e := vq.used[ringHeaderBytes+usedElemSize*slot:]
	binary.LittleEndian.PutUint32(e[0:], uint32(head))
	binary.LittleEndian.PutUint32(e[4:], n)
	vq.usedIdx++
	// used->flags stays 0: we always want the guest's kicks.
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&vq.used[0])), uint32(vq.usedIdx)<<16)
}

// notify interrupts the guest unless it asked not to be (VRING_AVAIL_F_NO_INTERRUPT;
// without EVENT_IDX that flag is the only suppression). The atomic store in
// push orders the used index before this load of the flags.
func (vq *vring) notify() {
	if vq.callFD < 0 {
		return
	}
	if flags, _ := vq.availHeader(); flags&availFNoIntr != 0 {
		return
	}
	var one = [8]byte{1}
	unix.Write(vq.callFD, one[:])
}

// reset forgets everything but the descriptors' ownership, which the
// caller handles.
func (vq *vring) closeFDs() {
	if vq.kick != nil {
		vq.kick.Close()
		vq.kick = nil
	}
	if vq.callFD >= 0 {
		unix.Close(vq.callFD)
		vq.callFD = -1
	}
	if vq.errFD >= 0 {
		unix.Close(vq.errFD)
		vq.errFD = -1
	}
}

// gather copies from bufs, starting at byte off of their concatenation, into dst.
func gather(dst []byte, bufs [][]byte, off int) int {
	n := 0
	for _, b := range bufs {
		if off >= len(b) {
			off -= len(b)
			continue
		}
		c := copy(dst[n:], b[off:])
		n += c
		off = 0
		if n == len(dst) {
			break
		}
	}
	return n
}

// scatter copies src into bufs starting at byte off of their concatenation.
func scatter(bufs [][]byte, off int, src []byte) int {
	n := 0
	for _, b := range bufs {
		if off >= len(b) {
			off -= len(b)
			continue
		}
		c := copy(b[off:], src[n:])
		n += c
		off = 0
		if n == len(src) {
			break
		}
	}
	return n
}

package vsock

import (
	"encoding/binary"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// memRegion is one guest RAM region the front-end shared (struct
// vhost_user_memory_region), mapped into this process.
type memRegion struct {
	gpa  uint64 // guest physical address
	size uint64
	uva  uint64 // the front-end's (QEMU's) virtual address of the region
	data []byte // the region: data[0] is gpa
	// mapping is what mmap returned (data may start inside it when the
	// offset was not page aligned).
	mapping []byte
}

// memory is the guest memory table set by SET_MEM_TABLE.
type memory struct {
	regions []memRegion
}

// parseMemTable maps the regions of a SET_MEM_TABLE payload, one descriptor
// per region. It closes the descriptors; on error nothing stays mapped.
func parseMemTable(payload []byte, fds []int) (memory, error) {
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	if len(payload) < 8 {
		return memory{}, fmt.Errorf("SET_MEM_TABLE: payload of %d bytes", len(payload))
	}
	n := binary.LittleEndian.Uint32(payload)
	switch {
	case n == 0 || n > maxMemRegions:
		return memory{}, fmt.Errorf("SET_MEM_TABLE: %d regions", n)
	case len(payload) < 8+int(n)*32:
		return memory{}, fmt.Errorf("SET_MEM_TABLE: %d regions in %d bytes", n, len(payload))
	case len(fds) != int(n):
		return memory{}, fmt.Errorf("SET_MEM_TABLE: %d regions but %d descriptors", n, len(fds))
	}
	page := uint64(os.Getpagesize())
	var m memory
	for i := 0; i < int(n); i++ {
		r := payload[8+i*32:]
		gpa := binary.LittleEndian.Uint64(r[0:])
		size := binary.LittleEndian.Uint64(r[8:])
		uva := binary.LittleEndian.Uint64(r[16:])
		off := binary.LittleEndian.Uint64(r[24:])
		if size == 0 || size > 1<<40 || gpa+size < gpa || uva+size < uva {
			m.unmap()
			return memory{}, fmt.Errorf("SET_MEM_TABLE: region %d: bad size %#x", i, size)
		}
		aligned := off &^ (page - 1)
		delta := off - aligned
		mapping, err := unix.Mmap(fds[i], int64(aligned), int(size+delta), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			m.unmap()
			return memory{}, fmt.Errorf("SET_MEM_TABLE: mapping region %d (%#x bytes at offset %#x): %w", i, size, off, err)
		}
		m.regions = append(m.regions, memRegion{gpa: gpa, size: size, uva: uva, data: mapping[delta : delta+size], mapping: mapping})
	}
	return m, nil
}

// unmap releases every region.
func (m *memory) unmap() {
	for _, r := range m.regions {
		unix.Munmap(r.mapping)
	}
	m.regions = nil
}

// gpa returns the n bytes of guest memory at guest physical address addr.
func (m *memory) gpa(addr, n uint64) ([]byte, error) {
	for _, r := range m.regions {
		if addr >= r.gpa && addr-r.gpa < r.size {
			off := addr - r.gpa
			if n > r.size-off {
				break
			}
			return r.data[off : off+n : off+n], nil
		}
	}
	return nil, fmt.Errorf("guest address %#x+%#x is not in guest memory", addr, n)
}

// uva returns the n bytes at the front-end's virtual address addr (the ring
// addresses of SET_VRING_ADDR are given that way).
func (m *memory) uva(addr, n uint64) ([]byte, error) {
	for _, r := range m.regions {
		if addr >= r.uva && addr-r.uva < r.size {
			off := addr - r.uva
			if n > r.size-off {
				break
			}
			return r.data[off : off+n : off+n], nil
		}
	}
	return nil, fmt.Errorf("front-end address %#x+%#x is not in the memory table", addr, n)
}

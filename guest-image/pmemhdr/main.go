// Command pmemhdr puts a file system image behind the info block that makes
// Linux map it with DAX from an NVDIMM: pmemhdr FS OUT.
//
// QEMU's NVDIMMs have no labels, so the guest sees one raw ("io")
// namespace, which it can read but not map with struct pages, and DAX
// needs those. At probe the kernel looks for a pfn info block at 4 KiB into
// the namespace (drivers/nvdimm/pfn_devs.c, nd_pfn_validate); with a valid
// one it makes the namespace an fsdax device whose data (the block device
// /dev/pmem0) starts at the block's dataoff. `ndctl create-namespace -m
// fsdax` would write that block from inside a guest; the image is
// read-only to every guest, so it is written here, once. The memmap lives
// in guest RAM (mode "ram": 64 bytes a page, 320 KiB for a 20 MiB image),
// not on the device, which no guest can write.
package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

const (
	infoOffset = 4 << 10 // where the kernel reads the info block
	infoSize   = 4 << 10 // sizeof(struct nd_pfn_sb)
	// dataOffset is where the file system starts: the kernel's offset for
	// mode "ram" (8 KiB of info block reserve, aligned up to align).
	dataOffset = 2 << 20
	align      = 2 << 20 // the mapping's alignment (PMD); sizes are multiples of it
	pageSize   = 4096
	modeRAM    = 1 // PFN_MODE_RAM: struct pages in guest RAM
)

// uuid names this info block; any constant works (the kernel keeps it for
// the pfn device). parent_uuid stays zero: a label-less namespace has none.
var uuid = [16]byte{'k', 'a', 's', 'a', '-', 'g', 'u', 'e', 's', 't', '-', 'p', 'm', 'e', 'm', 1}

// infoBlock is struct nd_pfn_sb (version 1.4) for a namespace of size
// bytes whose data starts at dataOffset.
func infoBlock(size int64) []byte {
	b := make([]byte, infoSize)
	le := binary.LittleEndian
	copy(b[0:16], "NVDIMM_PFN_INFO\x00")
	copy(b[16:32], uuid[:])
	// 32..48 parent_uuid, 48 flags: zero.
	le.PutUint16(b[52:], 1)                                  // version_major
	le.PutUint16(b[54:], 4)                                  // version_minor
	le.PutUint64(b[56:], dataOffset)                         // dataoff
	le.PutUint64(b[64:], uint64((size-dataOffset)/pageSize)) // npfns
	le.PutUint32(b[72:], modeRAM)                            // mode
	// 76 start_pad, 80 end_trunc: zero (the size is a multiple of align).
	le.PutUint32(b[84:], align)    // align
	le.PutUint32(b[88:], pageSize) // page_size
	le.PutUint16(b[92:], 64)       // page_struct_size
	le.PutUint64(b[infoSize-8:], fletcher64(b))
	return b
}

// fletcher64 is the kernel's nd_fletcher64 over little-endian 32-bit
// words, computed with the checksum field (the last 8 bytes) zero.
func fletcher64(b []byte) uint64 {
	var lo uint32
	var hi uint64
	for i := 0; i+4 <= len(b); i += 4 {
		w := binary.LittleEndian.Uint32(b[i:])
		if i >= len(b)-8 {
			w = 0
		}
		lo += w
		hi += uint64(lo)
	}
	return hi<<32 | uint64(lo)
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "pmemhdr:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: pmemhdr FS OUT")
	}
	in, err := os.Open(args[0])
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	if fi.Size() == 0 || fi.Size()%align != 0 {
		return fmt.Errorf("%s: size %d is not a positive multiple of %d", args[0], fi.Size(), align)
	}
	out, err := os.Create(args[1])
	if err != nil {
		return err
	}
	size := dataOffset + fi.Size()
	header := make([]byte, dataOffset)
	copy(header[infoOffset:], infoBlock(size))
	if _, err := out.Write(header); err != nil {
		out.Close()
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

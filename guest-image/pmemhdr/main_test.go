package main

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

// The info block has struct nd_pfn_sb's layout and a checksum the kernel's
// check accepts: its fletcher64 with the checksum field zeroed.
func TestInfoBlock(t *testing.T) {
	size := int64(22 << 20)
	b := infoBlock(size)
	le := binary.LittleEndian
	if len(b) != 4096 || string(b[:16]) != "NVDIMM_PFN_INFO\x00" {
		t.Fatalf("len %d, signature %q", len(b), b[:16])
	}
	if !bytes.Equal(b[32:48], make([]byte, 16)) {
		t.Errorf("parent_uuid %x, want zero (a label-less namespace)", b[32:48])
	}
	for _, f := range []struct {
		name      string
		got, want uint64
	}{
		{"version_major", uint64(le.Uint16(b[52:])), 1},
		{"version_minor", uint64(le.Uint16(b[54:])), 4},
		{"dataoff", le.Uint64(b[56:]), 2 << 20},
		{"npfns", le.Uint64(b[64:]), 20 << 20 / 4096},
		{"mode", uint64(le.Uint32(b[72:])), 1},
		{"align", uint64(le.Uint32(b[84:])), 2 << 20},
		{"page_size", uint64(le.Uint32(b[88:])), 4096},
		{"page_struct_size", uint64(le.Uint16(b[92:])), 64},
	} {
		if f.got != f.want {
			t.Errorf("%s = %d, want %d", f.name, f.got, f.want)
		}
	}
	// The kernel's way: zero the field, sum, compare.
	sum := le.Uint64(b[4088:])
	zeroed := append([]byte(nil), b...)
	copy(zeroed[4088:], make([]byte, 8))
	var lo uint32
	var hi uint64
	for i := 0; i < len(zeroed); i += 4 {
		lo += le.Uint32(zeroed[i:])
		hi += uint64(lo)
	}
	if want := hi<<32 | uint64(lo); sum != want || sum == 0 {
		t.Errorf("checksum %#x, want %#x", sum, want)
	}
	b[100] ^= 1
	if fletcher64(b) == sum {
		t.Error("the checksum does not change with the block")
	}
}

func TestRun(t *testing.T) {
	dir := t.TempDir()
	fs := bytes.Repeat([]byte{0xab}, 4<<20)
	if err := os.WriteFile(filepath.Join(dir, "fs"), fs, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := run([]string{filepath.Join(dir, "fs"), filepath.Join(dir, "img")}); err != nil {
		t.Fatal(err)
	}
	img, err := os.ReadFile(filepath.Join(dir, "img"))
	if err != nil {
		t.Fatal(err)
	}
	if len(img) != 6<<20 || !bytes.Equal(img[2<<20:], fs) || !bytes.Equal(img[4096:8192], infoBlock(6<<20)) {
		t.Errorf("image of %d bytes: the info block at 4 KiB and the file system at 2 MiB expected", len(img))
	}
	// A size the mapping cannot align is refused.
	os.WriteFile(filepath.Join(dir, "odd"), make([]byte, 4096), 0o644)
	if err := run([]string{filepath.Join(dir, "odd"), filepath.Join(dir, "img2")}); err == nil {
		t.Error("an odd-sized file system was accepted")
	}
}

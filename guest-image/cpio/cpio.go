// Package cpio writes reproducible "newc" cpio archives, the format of a Linux
// initramfs, from a gen_init_cpio-style list of entries.
package cpio

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// Entry is one archive member. Mtime is always 0 so archives are reproducible.
type Entry struct {
	Name     string // path inside the archive, without a leading "/"
	Mode     uint32 // file type and permission bits (S_IFREG|0755, ...)
	UID, GID uint32
	Major    uint32 // for device nodes
	Minor    uint32
	Data     []byte // file contents, or the target of a symlink
}

// File type bits of a newc header.
const (
	TypeDir     = 0o040000
	TypeReg     = 0o100000
	TypeSymlink = 0o120000
	TypeChar    = 0o020000
	TypeBlock   = 0o060000
)

// Writer emits entries in the order given.
type Writer struct {
	w     io.Writer
	ino   uint32
	off   int64
	err   error
	trail bool
}

func NewWriter(w io.Writer) *Writer { return &Writer{w: w, ino: 720} }

func (w *Writer) write(p []byte) {
	if w.err != nil {
		return
	}
	n, err := w.w.Write(p)
	w.off += int64(n)
	w.err = err
}

func (w *Writer) pad() {
	if r := w.off % 4; r != 0 {
		w.write(make([]byte, 4-r))
	}
}

// Add appends one entry.
func (w *Writer) Add(e Entry) error {
	name := strings.TrimPrefix(e.Name, "/")
	nlink := 1
	if e.Mode&0o170000 == TypeDir {
		nlink = 2
	}
	w.ino++
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		w.ino, e.Mode, e.UID, e.GID, nlink, 0, len(e.Data),
		0, 0, e.Major, e.Minor, len(name)+1, 0)
	w.write([]byte(hdr))
	w.write(append([]byte(name), 0))
	w.pad()
	w.write(e.Data)
	w.pad()
	return w.err
}

// Close writes the trailer. It does not close the underlying writer.
func (w *Writer) Close() error {
	if !w.trail {
		w.trail = true
		w.ino = 0
		w.Add(Entry{Name: "TRAILER!!!"})
	}
	return w.err
}

// ParseList reads entries in the format of the kernel's usr/gen_init_cpio:
//
//	dir   <name> <mode> <uid> <gid>
//	file  <name> <location> <mode> <uid> <gid>
//	slink <name> <target> <mode> <uid> <gid>
//	nod   <name> <mode> <uid> <gid> <c|b> <maj> <min>
//
// File contents are read from <location>. Blank lines and "#" comments are skipped.
func ParseList(r io.Reader) ([]Entry, error) {
	var out []Entry
	sc := bufio.NewScanner(r)
	for lineNo := 1; sc.Scan(); lineNo++ {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		e, err := parseLine(f)
		if err != nil {
			return nil, fmt.Errorf("line %d: %q: %w", lineNo, sc.Text(), err)
		}
		out = append(out, e)
	}
	return out, sc.Err()
}

func parseLine(f []string) (Entry, error) {
	want := map[string]int{"dir": 5, "file": 6, "slink": 6, "nod": 8}
	n, ok := want[f[0]]
	if !ok {
		return Entry{}, fmt.Errorf("unknown entry type %q (want dir, file, slink or nod)", f[0])
	}
	if len(f) != n {
		return Entry{}, fmt.Errorf("%s takes %d fields, got %d", f[0], n-1, len(f)-1)
	}
	nums := func(s ...string) ([]uint32, error) {
		var v []uint32
		for i, x := range s {
			base := 10
			if i == 0 {
				base = 8 // mode
			}
			u, err := strconv.ParseUint(x, base, 32)
			if err != nil {
				return nil, fmt.Errorf("bad number %q", x)
			}
			v = append(v, uint32(u))
		}
		return v, nil
	}
	e := Entry{Name: f[1]}
	switch f[0] {
	case "dir":
		v, err := nums(f[2:5]...)
		if err != nil {
			return e, err
		}
		e.Mode, e.UID, e.GID = TypeDir|v[0], v[1], v[2]
	case "file":
		v, err := nums(f[3:6]...)
		if err != nil {
			return e, err
		}
		data, err := os.ReadFile(f[2])
		if err != nil {
			return e, err
		}
		e.Mode, e.UID, e.GID, e.Data = TypeReg|v[0], v[1], v[2], data
	case "slink":
		v, err := nums(f[3:6]...)
		if err != nil {
			return e, err
		}
		e.Mode, e.UID, e.GID, e.Data = TypeSymlink|v[0], v[1], v[2], []byte(f[2])
	case "nod":
		v, err := nums(f[2], f[3], f[4], f[6], f[7])
		if err != nil {
			return e, err
		}
		typ := uint32(TypeChar)
		switch f[5] {
		case "c":
		case "b":
			typ = TypeBlock
		default:
			return e, fmt.Errorf("device type %q is not c or b", f[5])
		}
		e.Mode, e.UID, e.GID, e.Major, e.Minor = typ|v[0], v[1], v[2], v[3], v[4]
	}
	return e, nil
}

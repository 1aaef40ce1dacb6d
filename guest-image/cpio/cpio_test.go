package cpio

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// readBack parses a newc archive: names, modes, sizes and data, checking
// alignment on the way.
func readBack(t *testing.T, b []byte) []Entry {
	t.Helper()
	var out []Entry
	off := 0
	field := func(i int) uint32 {
		v, err := strconv.ParseUint(string(b[off+6+8*i:off+6+8*i+8]), 16, 32)
		if err != nil {
			t.Fatalf("bad header at %d: %v", off, err)
		}
		return uint32(v)
	}
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if string(b[off:off+6]) != "070701" {
			t.Fatalf("no magic at %d", off)
		}
		mode, size, namesize := field(1), field(6), field(11)
		name := string(b[off+110 : off+110+int(namesize)-1])
		dataStart := align(off + 110 + int(namesize))
		e := Entry{Name: name, Mode: mode, Major: field(9), Minor: field(10), Data: b[dataStart : dataStart+int(size)]}
		off = align(dataStart + int(size))
		if name == "TRAILER!!!" {
			if off != len(b) {
				t.Fatalf("%d bytes after trailer", len(b)-off)
			}
			return out
		}
		out = append(out, e)
	}
}

func TestListToArchive(t *testing.T) {
	dir := t.TempDir()
	agent := filepath.Join(dir, "agent")
	os.WriteFile(agent, []byte("#!agent"), 0o755)
	list := strings.Join([]string{
		"# guest root",
		"dir /dev 0755 0 0",
		"nod /dev/console 0600 0 0 c 5 1",
		"file /init " + agent + " 0755 0 0",
		"slink /sbin/init /init 0777 0 0",
	}, "\n")
	entries, err := ParseList(strings.NewReader(list))
	if err != nil {
		t.Fatal(err)
	}
	var a, b bytes.Buffer
	for _, buf := range []*bytes.Buffer{&a, &b} {
		w := NewWriter(buf)
		for _, e := range entries {
			if err := w.Add(e); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two archives of the same list differ")
	}
	got := readBack(t, a.Bytes())
	if len(got) != 4 {
		t.Fatalf("got %d entries", len(got))
	}
	if got[1].Name != "dev/console" || got[1].Mode != TypeChar|0o600 || got[1].Major != 5 || got[1].Minor != 1 {
		t.Fatalf("console node = %+v", got[1])
	}
	if got[2].Name != "init" || string(got[2].Data) != "#!agent" || got[2].Mode != TypeReg|0o755 {
		t.Fatalf("init = %+v", got[2])
	}
	if got[3].Mode&0o170000 != TypeSymlink || string(got[3].Data) != "/init" {
		t.Fatalf("symlink = %+v", got[3])
	}
}

func TestParseListErrors(t *testing.T) {
	for _, line := range []string{
		"pipe /x 0644 0 0",
		"dir /x 0755 0",
		"nod /x 0600 0 0 q 1 1",
		"dir /x 9z 0 0",
		"file /x /does/not/exist 0644 0 0",
	} {
		if _, err := ParseList(strings.NewReader(line)); err == nil || !strings.Contains(err.Error(), "line 1") {
			t.Errorf("%q: err = %v, want an error naming line 1", line, err)
		}
	}
}

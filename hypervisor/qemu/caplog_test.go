package qemu

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// A guest that prints without end leaves at most twice the cap on the host,
// and the newest output is in the live file.
func TestCopyCappedRotatesAndBounds(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	const limit = 1000
	var in bytes.Buffer
	for i := 0; i < 5000; i++ {
		in.WriteString("0123456789")
	}
	in.WriteString("THE END")
	if err := copyCapped(&in, path, limit); err != nil {
		t.Fatal(err)
	}
	live, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	old, err := os.ReadFile(path + ".1")
	if err != nil {
		t.Fatal(err)
	}
	if len(live) > limit || len(old) != limit {
		t.Errorf("live %d bytes, rotated %d bytes; want ≤ %d and = %d", len(live), len(old), limit, limit)
	}
	if !bytes.HasSuffix(live, []byte("THE END")) {
		t.Errorf("live log does not end with the newest output: %q", live[max(0, len(live)-20):])
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 2 {
		t.Errorf("%d files, want console.log and console.log.1", len(entries))
	}
}

func TestReadableBy(t *testing.T) {
	for _, tc := range []struct {
		fileUID, fileGID, mode uint32
		want                   bool
	}{
		{0, 0, 0o644, true},   // world-readable
		{0, 0, 0o640, false},  // root's group only
		{0, 500, 0o640, true}, // our group
		{500, 0, 0o400, true}, // ours
		{500, 0, 0o044, false},
		{0, 0, 0o600, false},
	} {
		if got := readableBy(tc.fileUID, tc.fileGID, tc.mode, 500, 500); got != tc.want {
			t.Errorf("file %d:%d mode %#o readable by 500:500 = %v, want %v", tc.fileUID, tc.fileGID, tc.mode, got, tc.want)
		}
	}
}

package sandbox

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/agent/api"
)

func testTarget(t *testing.T) CopyTarget {
	root := filepath.Join(t.TempDir(), "kasa")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	return CopyTarget{Root: root, Forbidden: []string{filepath.Join(root, "containers")}}
}

func TestCopyFileInChunks(t *testing.T) {
	tg := testTarget(t)
	uid, gid := uint32(os.Getuid()), uint32(os.Getgid())
	path := filepath.Join(tg.Root, "sb/etc/hosts")
	content := bytes.Repeat([]byte("x"), 10)
	req := func(off int, data []byte) *api.CopyFileRequest {
		return &api.CopyFileRequest{Path: path, FileMode: unix.S_IFREG | 0o640, DirMode: 0o750, Uid: uid, Gid: gid, Offset: int64(off), Data: data, FileSize: int64(len(content))}
	}
	if err := tg.CopyFile(req(0, content[:6])); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("file visible before its last chunk: %v", err)
	}
	if err := tg.CopyFile(req(6, content[6:])); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("content %q %v", got, err)
	}
	if fi, _ := os.Stat(path); fi.Mode() != 0o640 {
		t.Errorf("mode %v", fi.Mode())
	}
	if fi, _ := os.Stat(filepath.Dir(path)); fi.Mode().Perm() != 0o750 {
		t.Errorf("parent mode %v", fi.Mode())
	}
	if _, err := os.Stat(path + ".kasa-copy"); !os.IsNotExist(err) {
		t.Error("temporary file left")
	}
	// An empty file in one request.
	empty := filepath.Join(tg.Root, "empty")
	if err := tg.CopyFile(&api.CopyFileRequest{Path: empty, FileMode: 0o600, Uid: uid, Gid: gid}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(empty); err != nil || fi.Size() != 0 || !fi.Mode().IsRegular() {
		t.Fatalf("empty file: %v %v", fi, err)
	}
}

func TestCopyFileDirAndSymlink(t *testing.T) {
	tg := testTarget(t)
	uid, gid := uint32(os.Getuid()), uint32(os.Getgid())
	dir := filepath.Join(tg.Root, "rootfs/bin")
	if err := tg.CopyFile(&api.CopyFileRequest{Path: dir, FileMode: unix.S_IFDIR | 0o711, Uid: uid, Gid: gid}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o711 {
		t.Fatalf("dir: %v %v", fi, err)
	}
	link := filepath.Join(dir, "sh")
	for i := 0; i < 2; i++ { // replacing an existing link works too
		if err := tg.CopyFile(&api.CopyFileRequest{Path: link, FileMode: unix.S_IFLNK | 0o777, Data: []byte("busybox"), Uid: uid, Gid: gid}); err != nil {
			t.Fatal(err)
		}
	}
	if target, err := os.Readlink(link); err != nil || target != "busybox" {
		t.Fatalf("link -> %q %v", target, err)
	}
}

func TestCopyFileRejects(t *testing.T) {
	tg := testTarget(t)
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(tg.Root, "escape")); err != nil {
		t.Fatal(err)
	}
	reg := func(path string) *api.CopyFileRequest {
		return &api.CopyFileRequest{Path: path, FileMode: 0o644, Data: []byte("x"), FileSize: 1, Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid())}
	}
	cases := map[string]*api.CopyFileRequest{
		"relative":        reg("etc/hosts"),
		"unclean":         reg(tg.Root + "/a/../b"),
		"outside":         reg("/etc/hosts"),
		"the root itself": {Path: tg.Root, FileMode: unix.S_IFDIR | 0o755},
		"agent state":     reg(filepath.Join(tg.Root, "containers/c1/state.json")),
		"through symlink": reg(filepath.Join(tg.Root, "escape/f")),
		"too big":         {Path: filepath.Join(tg.Root, "f"), Data: make([]byte, maxCopyChunk+1), FileSize: maxCopyChunk + 1},
		"past the end":    {Path: filepath.Join(tg.Root, "f"), Offset: 5, Data: []byte("xx"), FileSize: 6},
		"device":          {Path: filepath.Join(tg.Root, "f"), FileMode: unix.S_IFCHR | 0o666},
		"empty symlink":   {Path: filepath.Join(tg.Root, "l"), FileMode: unix.S_IFLNK | 0o777},
	}
	for name, req := range cases {
		if err := tg.CopyFile(req); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Errorf("wrote outside the root: %v", entries)
	}
}

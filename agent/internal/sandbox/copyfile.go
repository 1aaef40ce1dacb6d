package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/agent/api"
)

// maxCopyChunk is CopyFileRequest.data's limit.
const maxCopyChunk = 1 << 20

// CopyTarget says where CopyFile may write: under Root, but never under
// one of Forbidden (the agent's own state).
type CopyTarget struct {
	Root      string
	Forbidden []string
}

// DefaultCopyTarget is the directory the agent manages for the sandbox,
// without libcontainer's state.
var DefaultCopyTarget = CopyTarget{Root: "/run/kasa", Forbidden: []string{"/run/kasa/containers"}}

func (t CopyTarget) allows(path string) bool {
	within := func(dir string) bool { return path == dir || strings.HasPrefix(path, dir+"/") }
	if !within(t.Root) || path == t.Root {
		return false
	}
	for _, f := range t.Forbidden {
		if within(f) {
			return false
		}
	}
	return true
}

// CopyFile writes one chunk of a file, or creates a directory or symbolic
// link, as CopyFileRequest describes. A regular file is assembled in
// path.kasa-copy and renamed into place with its last chunk.
func (t CopyTarget) CopyFile(req *api.CopyFileRequest) error {
	path := req.GetPath()
	bad := func(format string, args ...any) error {
		return fmt.Errorf("copy file %q: %s: %w", path, fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
	}
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return bad("want an absolute, clean guest path")
	}
	if !t.allows(path) {
		return bad("outside %s, where the host may copy files", t.Root)
	}
	data := req.GetData()
	if len(data) > maxCopyChunk {
		return bad("chunk of %d bytes is over the %d limit", len(data), maxCopyChunk)
	}
	perm := os.FileMode(req.GetFileMode() & 0o777)
	special := req.GetFileMode() & (unix.S_ISUID | unix.S_ISGID | unix.S_ISVTX)
	uid, gid := int(req.GetUid()), int(req.GetGid())
	if err := mkdirParents(filepath.Dir(path), os.FileMode(req.GetDirMode()&0o7777), uid, gid, t.Root); err != nil {
		return fmt.Errorf("copy file %q: create parents: %w", path, err)
	}
	// A symbolic link among the parents must not lead the write elsewhere.
	if real, err := filepath.EvalSymlinks(filepath.Dir(path)); err != nil || !t.allows(filepath.Join(real, filepath.Base(path))) {
		return bad("its directory resolves outside %s", t.Root)
	}

	switch req.GetFileMode() & unix.S_IFMT {
	case unix.S_IFDIR:
		if err := os.Mkdir(path, perm); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("copy file %q: %w", path, err)
		}
		return finish(path, perm, special, uid, gid, false)
	case unix.S_IFLNK:
		if len(data) == 0 {
			return bad("symbolic link without a target")
		}
		tmp := path + ".kasa-copy"
		os.Remove(tmp)
		if err := os.Symlink(string(data), tmp); err != nil {
			return fmt.Errorf("copy file %q: %w", path, err)
		}
		if err := os.Lchown(tmp, uid, gid); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("copy file %q: %w", path, err)
		}
		return renameInto(tmp, path)
	case 0, unix.S_IFREG:
	default:
		return bad("file_mode %#o: want a regular file, directory or symbolic link", req.GetFileMode())
	}

	off, size := req.GetOffset(), req.GetFileSize()
	if off < 0 || size < 0 || off+int64(len(data)) > size {
		return bad("chunk at %d of %d bytes does not fit a file of %d bytes", off, len(data), size)
	}
	tmp := path + ".kasa-copy"
	flags := os.O_WRONLY | os.O_CREATE
	if off == 0 {
		flags |= os.O_TRUNC
	}
	f, err := os.OpenFile(tmp, flags, 0o600)
	if err != nil {
		return fmt.Errorf("copy file %q: %w", path, err)
	}
	if _, err := f.WriteAt(data, off); err != nil {
		f.Close()
		return fmt.Errorf("copy file %q: write at %d: %w", path, off, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("copy file %q: %w", path, err)
	}
	if off+int64(len(data)) < size {
		return nil // more chunks to come
	}
	if err := finish(tmp, perm, special, uid, gid, true); err != nil {
		return fmt.Errorf("copy file %q: %w", path, err)
	}
	return renameInto(tmp, path)
}

// finish sets owner and mode (chmod after chown: chown clears set-id bits).
func finish(path string, perm os.FileMode, special uint32, uid, gid int, removeOnError bool) error {
	err := os.Lchown(path, uid, gid)
	if err == nil {
		err = unix.Chmod(path, uint32(perm)|special)
	}
	if err != nil && removeOnError {
		os.Remove(path)
	}
	return err
}

func renameInto(tmp, path string) error {
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("copy file %q: %w", path, err)
	}
	return nil
}

// mkdirParents creates dir and its missing parents below root with mode and
// owner.
func mkdirParents(dir string, mode os.FileMode, uid, gid int, root string) error {
	if mode == 0 {
		mode = 0o755
	}
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if dir != root && dir != "/" {
		if err := mkdirParents(filepath.Dir(dir), mode, uid, gid, root); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, mode.Perm()); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil
		}
		return err
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		return err
	}
	return unix.Chmod(dir, uint32(mode))
}

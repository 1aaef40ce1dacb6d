package fsshare

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Volume says how a host file or directory is bound into the share: what
// the OCI mount asked for, as runc would do it on the host, plus nosuid
// and nodev, which every mount of the share gets.
type Volume struct {
	// Source is the host path.
	Source string
	// Recursive binds the mounts below Source too (OCI "rbind"); without
	// it the guest sees the directories they sit on, as with "bind".
	Recursive bool
	// ReadOnly makes the bind itself read-only (OCI "ro"); mounts below
	// it keep their own flags, as runc leaves them.
	ReadOnly bool
	// RecursiveReadOnly makes the bind and every mount below it
	// read-only (OCI "rro", CRI recursive_read_only).
	RecursiveReadOnly bool
	// NoExec makes every mount of the bind noexec (OCI "noexec").
	NoExec bool
	// FollowHost makes the bind a slave of the source's mount (OCI
	// "rslave", CRI HostToContainer): what the host mounts below Source
	// later reaches the share, and so the guest. Otherwise the bind is
	// private: later host mounts do not reach it, nothing goes back.
	FollowHost bool
}

// MaxSubmounts bounds the mounts below a volume's source that the guest
// is told about (Bound.Submounts): the source is the pod spec's choice,
// and a node's / has a mount for every runc container it runs.
const MaxSubmounts = 256

// Bound is a volume in the share.
type Bound struct {
	// GuestPath is where the guest finds the volume.
	GuestPath string
	// Submounts are the mounts below the source that the bind took along
	// (Volume.Recursive), parents first.
	Submounts []Submount
	// SubmountsOmitted tells that there were more than MaxSubmounts, and
	// Submounts is empty.
	SubmountsOmitted bool
}

// Submount is a mount below a volume's source.
type Submount struct {
	// Path is relative to the volume.
	Path string
	// ReadOnly tells that the mount is read-only in the share.
	ReadOnly bool
}

// BindVolume binds v.Source into the share as v says.
func (s *Share) BindVolume(containerID string, index int, v Volume) (Bound, error) {
	fi, err := os.Stat(v.Source)
	if err != nil {
		return Bound{}, fmt.Errorf("volume source: %w", err)
	}
	target := filepath.Join(s.containerDir(containerID), "volumes", strconv.Itoa(index)+"-"+filepath.Base(v.Source))
	if err := s.bindTree(v, target, fi.IsDir()); err != nil {
		return Bound{}, fmt.Errorf("bind volume %s: %w", v.Source, err)
	}
	b := Bound{GuestPath: s.guestPath(target)}
	if v.Recursive {
		if b.Submounts, err = submountsOf(v); err != nil {
			return Bound{}, fmt.Errorf("volume %s: %w", v.Source, err)
		}
		if len(b.Submounts) > MaxSubmounts {
			b.Submounts, b.SubmountsOmitted = nil, true
		}
	}
	return b, nil
}

// submountsOf lists the mounts strictly below v.Source on the node, which
// a recursive bind takes along, parents first, each once (a mount point
// with mounts stacked on it is listed once), and stops after
// MaxSubmounts+1.
func submountsOf(v Volume) ([]Submount, error) {
	src, err := filepath.EvalSymlinks(v.Source)
	if err != nil {
		return nil, err
	}
	mounts, err := mountsUnder(src)
	if err != nil {
		return nil, err
	}
	slices.Reverse(mounts) // shallowest first
	prefix := strings.TrimSuffix(src, "/") + "/"
	var out []Submount
	for _, m := range mounts {
		rel, ok := strings.CutPrefix(m, prefix)
		if !ok || slices.ContainsFunc(out, func(o Submount) bool { return o.Path == rel }) {
			continue
		}
		if len(out) > MaxSubmounts {
			break
		}
		var st unix.Statfs_t
		if err := unix.Statfs(m, &st); err != nil {
			return nil, fmt.Errorf("submount %s: %w", m, err)
		}
		out = append(out, Submount{Path: rel, ReadOnly: v.RecursiveReadOnly || st.Flags&unix.ST_RDONLY != 0})
	}
	return out, nil
}

// bindTree mounts a copy of v.Source's mount tree at target, which it
// creates (a directory, or a file for a file's bind): in virtiofsd's mount
// namespace if it has one (volumens.go), in the node's otherwise. There,
// the mount point is made and resolved within the daemon's root, the
// share, whatever the guest made of the share's directories. The copy is
// made detached (open_tree), given its flags and propagation there, and
// only then attached (move_mount), so that no copy of it ever has other
// flags. (In the node's namespace the share is a shared mount whose slave
// is virtiofsd's view, and what is attached to it is copied there as a
// slave of the copy attached here: binding first and changing the
// propagation after would leave that copy a slave of the node's peer
// group, receiving host mounts even for a private volume.)
func (s *Share) bindTree(v Volume, target string, dir bool) error {
	fd, err := cloneTree(v, s.userns)
	if errors.Is(err, unix.ENOSYS) {
		// Before Linux 5.12: mount(2) in the node's namespace.
		if err := makeMountPoint(target, dir); err != nil {
			return err
		}
		return bindTreeClassic(v, target)
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	attach := func(target string) error {
		if err := makeMountPoint(target, dir); err != nil {
			return err
		}
		if err := unix.MoveMount(fd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
			return fmt.Errorf("move_mount to %s: %w", target, err)
		}
		return nil
	}
	ns, err := s.volumeNamespace()
	if err != nil {
		return err
	}
	if ns == nil {
		return attach(target)
	}
	return inMountNamespace(ns, func() error { return attach(s.inView(target)) })
}

// cloneTree returns a detached copy of v.Source's mount tree (of the
// source's mount alone without v.Recursive) with v's flags and
// propagation, idmapped into userns if not nil (an unprivileged
// virtiofsd's: idmap.go), or ENOSYS before Linux 5.12.
func cloneTree(v Volume, userns *os.File) (int, error) {
	var fd int
	var err error
	if userns != nil {
		fd, err = cloneIdmapped(v.Source, userns, v.Recursive)
	} else {
		flags := uint(unix.OPEN_TREE_CLONE | unix.OPEN_TREE_CLOEXEC)
		if v.Recursive {
			flags |= unix.AT_RECURSIVE
		}
		fd, err = unix.OpenTree(unix.AT_FDCWD, v.Source, flags)
		if err != nil && !errors.Is(err, unix.ENOSYS) {
			err = fmt.Errorf("open_tree: %w", err)
		}
	}
	if err != nil {
		return -1, err
	}
	all := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV, Propagation: unix.MS_PRIVATE}
	if v.NoExec {
		all.Attr_set |= unix.MOUNT_ATTR_NOEXEC
	}
	if v.RecursiveReadOnly {
		all.Attr_set |= unix.MOUNT_ATTR_RDONLY
	}
	if v.FollowHost {
		all.Propagation = unix.MS_SLAVE
	}
	err = unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, all)
	if err == nil && v.ReadOnly && !v.RecursiveReadOnly {
		err = unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY})
	}
	if err != nil {
		unix.Close(fd) // the clone goes with it
		if errors.Is(err, unix.ENOSYS) {
			return -1, err // Linux 5.2 to 5.11
		}
		return -1, fmt.Errorf("mount_setattr: %w", err)
	}
	return fd, nil
}

// makeMountPoint creates target, a directory or an empty file, and its
// parents.
func makeMountPoint(target string, dir bool) error {
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	if dir {
		return os.MkdirAll(target, 0o755)
	}
	f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|unix.O_NOFOLLOW, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

// bindTreeClassic is bindTree for kernels before 5.12 (no mount_setattr),
// with mount(2) only. There a private volume whose source is a shared mount may still
// receive host mounts in virtiofsd's view (see bindTree).
func bindTreeClassic(v Volume, target string) error {
	flags := uintptr(unix.MS_BIND)
	if v.Recursive {
		flags |= unix.MS_REC
	}
	if err := unix.Mount(v.Source, target, "", flags, ""); err != nil {
		return err
	}
	prop := uintptr(unix.MS_PRIVATE)
	if v.FollowHost {
		prop = unix.MS_SLAVE
	}
	err := unix.Mount("", target, "", prop|unix.MS_REC, "")
	if err == nil {
		err = restrict(target, v.RecursiveReadOnly, v.NoExec)
	}
	if err == nil && v.ReadOnly && !v.RecursiveReadOnly {
		top := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV)
		if v.NoExec {
			top |= unix.MS_NOEXEC
		}
		err = unix.Mount("", target, "", top, "")
	}
	if err != nil {
		unmountAndRemove(target)
	}
	return err
}

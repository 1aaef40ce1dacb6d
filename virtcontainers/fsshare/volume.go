package fsshare

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

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

// BindVolume binds v.Source into the share as v says and returns its
// guest path.
func (s *Share) BindVolume(containerID string, index int, v Volume) (string, error) {
	fi, err := os.Stat(v.Source)
	if err != nil {
		return "", fmt.Errorf("volume source: %w", err)
	}
	target := filepath.Join(s.containerDir(containerID), "volumes", strconv.Itoa(index)+"-"+filepath.Base(v.Source))
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return "", err
	}
	if fi.IsDir() {
		err = os.MkdirAll(target, 0o755)
	} else {
		var f *os.File
		if f, err = os.OpenFile(target, os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			f.Close()
		}
	}
	if err != nil {
		return "", err
	}
	if err := bindTree(v, target); err != nil {
		return "", fmt.Errorf("bind volume %s: %w", v.Source, err)
	}
	return s.guestPath(target), nil
}

// bindTree mounts a copy of v.Source's mount tree at target. The copy is
// made detached (open_tree), given its flags and propagation there, and
// only then attached (move_mount): the share is a shared mount whose
// slave is virtiofsd's view, and what is attached to it is copied into
// that view as a slave of the copy attached here. Binding first and
// changing the propagation after would leave virtiofsd's copy a slave of
// the host's peer group, receiving host mounts even for a private volume.
func bindTree(v Volume, target string) error {
	flags := uint(unix.OPEN_TREE_CLONE | unix.OPEN_TREE_CLOEXEC)
	if v.Recursive {
		flags |= unix.AT_RECURSIVE
	}
	fd, err := unix.OpenTree(unix.AT_FDCWD, v.Source, flags)
	if errors.Is(err, unix.ENOSYS) {
		return bindTreeClassic(v, target)
	}
	if err != nil {
		return fmt.Errorf("open_tree: %w", err)
	}
	defer unix.Close(fd)

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
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, all); err != nil {
		return fmt.Errorf("mount_setattr: %w", err)
	}
	if v.ReadOnly && !v.RecursiveReadOnly {
		if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}); err != nil {
			return fmt.Errorf("mount_setattr read-only: %w", err)
		}
	}
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("move_mount to %s: %w", target, err)
	}
	return nil
}

// bindTreeClassic is bindTree for kernels before 5.2, with mount(2)
// only. There a private volume whose source is a shared mount may still
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

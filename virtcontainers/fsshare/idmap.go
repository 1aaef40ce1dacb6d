package fsshare

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/mount"
	"golang.org/x/sys/unix"
)

// A virtiofsd without root (userns.go) runs as root of a user namespace U
// whose ids 0..65535 are host ids of its own. For it to serve the
// containers' files, owned by host ids 0..65535, as their owners, every
// mount it serves is an idmapped mount: one on which a file the host sees
// owned by n is owned by U's n, and a file U's n creates is owned by n on
// disk. The share's own directory is not idmapped: U sees it owned by
// nobody, can look through it and cannot write to it.
//
// What Linux can idmap: most disk filesystems (ext4, xfs, btrfs) since
// 5.12–5.15, tmpfs since 6.3, never an overlayfs mount itself. A
// container's overlay root filesystem is therefore mounted anew on
// idmapped clones of its layers (overlayfs takes idmapped layers since
// 5.19), and a mount nothing can idmap is refused, naming it, with
// ErrNotIdmappable: serving it unmapped would show every file as nobody's.

// ErrNotIdmappable marks a mount the kernel cannot idmap, so that an
// unprivileged virtiofsd cannot serve it. It is a failed precondition of
// the node, not a fault of the request.
var ErrNotIdmappable = fmt.Errorf("an unprivileged virtiofsd cannot serve it with its owners (hypervisor.qemu.virtio_fs_userns = \"off\" serves every mount from a root virtiofsd): %w", errdefs.ErrFailedPrecondition)

// cloneIdmapped returns a detached copy of the mount tree at src (only the
// mount at src unless recursive) on which ids are mapped into userns.
func cloneIdmapped(src string, userns *os.File, recursive bool) (int, error) {
	fd, err := tryCloneIdmapped(src, userns, recursive)
	if !refused(err) {
		return fd, err
	}
	// Name the mounts the kernel refused: src's own, or those below it.
	culprits := []string{src}
	if recursive {
		if fd, err := tryCloneIdmapped(src, userns, false); err == nil {
			unix.Close(fd)
			culprits = culprits[:0]
			below, _ := mountsUnder(src)
			for _, m := range below {
				if fd, err := tryCloneIdmapped(m, userns, false); err == nil {
					unix.Close(fd)
				} else if m != src {
					culprits = append(culprits, m)
				}
			}
		}
	}
	var uts unix.Utsname
	unix.Uname(&uts)
	var what []string
	tmpfs := false
	for _, c := range culprits {
		fstype := fsTypeOf(c)
		tmpfs = tmpfs || fstype == "tmpfs"
		what = append(what, fmt.Sprintf("%s (%s)", c, fstype))
	}
	if len(what) == 0 {
		what = append(what, "a mount below "+src)
	}
	var errno unix.Errno
	errors.As(err, &errno)
	hint := ""
	if tmpfs {
		hint = "; tmpfs can be since Linux 6.3"
	}
	return -1, fmt.Errorf("Linux %s cannot idmap %s (%v%s): %w",
		unix.ByteSliceToString(uts.Release[:]), strings.Join(what, ", "), errno, hint, ErrNotIdmappable)
}

// errSetattr marks mount_setattr's errors, as opposed to open_tree's.
var errSetattr = errors.New("mount_setattr")

// refused tells the kernel's refusal to idmap a mount (EINVAL: the
// filesystem cannot; EPERM: the mount is idmapped already) from other
// errors.
func refused(err error) bool {
	return errors.Is(err, errSetattr) && (errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EPERM))
}

// tryCloneIdmapped is cloneIdmapped with the kernel's own errors.
func tryCloneIdmapped(src string, userns *os.File, recursive bool) (int, error) {
	flags := unix.OPEN_TREE_CLONE | unix.OPEN_TREE_CLOEXEC
	setFlags := unix.AT_EMPTY_PATH
	if recursive {
		flags |= unix.AT_RECURSIVE
		setFlags |= unix.AT_RECURSIVE
	}
	fd, err := unix.OpenTree(unix.AT_FDCWD, src, uint(flags))
	if err != nil {
		return -1, fmt.Errorf("open_tree %s: %w", src, err)
	}
	attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(userns.Fd())}
	if err := unix.MountSetattr(fd, "", uint(setFlags), attr); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("idmap %s: %w: %w", src, errSetattr, err)
	}
	return fd, nil
}

// attach mounts the detached tree fd at target and closes fd.
func attach(fd int, target string) error {
	defer unix.Close(fd)
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("move_mount to %s: %w", target, err)
	}
	return nil
}

// bindIdmapped is a recursive bind mount of source at target, idmapped
// into the share's user namespace.
func (s *Share) bindIdmapped(source, target string) error {
	fd, err := cloneIdmapped(source, s.userns, true)
	if err != nil {
		return err
	}
	return attach(fd, target)
}

// StagingRoot holds short-lived mounts: layers and root filesystems on
// their way to an idmapped mount in a share, each in a directory named
// after its sandbox. It is outside the shares, so nothing of it
// propagates to virtiofsd.
var StagingRoot = "/run/kasa/idmap"

// stagingPrefix starts the names of the sandbox's staging directories:
// short, since overlay's options hold every layer's path in one page.
func (s *Share) stagingPrefix() string {
	id := s.SandboxID
	if len(id) > 16 {
		id = id[:16]
	}
	return id + "-"
}

// staged runs f with an empty directory of StagingRoot, then detaches
// whatever f mounted there and removes it.
func (s *Share) staged(f func(dir string) error) error {
	if err := os.MkdirAll(StagingRoot, 0o700); err != nil {
		return err
	}
	dir, err := os.MkdirTemp(StagingRoot, s.stagingPrefix())
	if err != nil {
		return err
	}
	err = f(dir)
	if uerr := unmountAndRemove(dir); err == nil {
		err = uerr
	}
	return err
}

// mountRootfsIdmapped mounts a container's root filesystem at target,
// idmapped into the share's user namespace.
func (s *Share) mountRootfsIdmapped(mounts []mount.Mount, target string) error {
	if len(mounts) == 1 && mounts[0].Type == "overlay" {
		return s.overlayIdmapped(mounts[0], target)
	}
	// Anything else (a bind of the bundle's directory, a block device of
	// the devmapper snapshotter) is mounted aside, then cloned idmapped.
	return s.staged(func(dir string) error {
		if err := mount.All(mounts, dir); err != nil {
			return err
		}
		return s.bindIdmapped(dir, target)
	})
}

// overlayIdmapped mounts overlay m at target on idmapped layers: one
// idmapped clone of the directory holding every layer (containerd's
// snapshots directory) is attached aside, the overlay is mounted from
// paths in it, and the clone is detached again (overlayfs keeps private
// copies of its layers' mounts).
func (s *Share) overlayIdmapped(m mount.Mount, target string) error {
	var layers []string
	var rest []string
	type layerOpt struct {
		key   string
		paths []string
	}
	var opts []layerOpt
	for _, o := range m.Options {
		key, val, _ := strings.Cut(o, "=")
		switch key {
		case "lowerdir", "upperdir", "workdir":
			paths := strings.Split(val, ":")
			for _, p := range paths {
				if !filepath.IsAbs(p) || filepath.Clean(p) != p || strings.ContainsAny(p, ",\\") {
					return fmt.Errorf("overlay %s %q: want clean absolute paths", key, p)
				}
			}
			layers = append(layers, paths...)
			opts = append(opts, layerOpt{key, paths})
		default:
			rest = append(rest, o)
		}
	}
	if len(layers) == 0 {
		return errors.New("overlay without lowerdir")
	}
	common := layers[0]
	for _, l := range layers[1:] {
		for common != "/" && l != common && !strings.HasPrefix(l, common+"/") {
			common = filepath.Dir(common)
		}
	}
	// Only the mount at common is cloned: every layer must be on it.
	id, err := mountID(common)
	if err != nil {
		return err
	}
	for _, l := range layers {
		if lid, err := mountID(l); err != nil || lid != id {
			return fmt.Errorf("overlay layer %s is not on the mount of %s (%v): layers on several mounts cannot be idmapped together", l, common, err)
		}
	}
	return s.staged(func(dir string) error {
		fd, err := cloneIdmapped(common, s.userns, false)
		if err != nil {
			return fmt.Errorf("overlay layers: %w", err)
		}
		if err := attach(fd, dir); err != nil {
			return err
		}
		for _, o := range opts {
			mapped := make([]string, len(o.paths))
			for i, p := range o.paths {
				rel, _ := filepath.Rel(common, p)
				mapped[i] = filepath.Join(dir, rel)
			}
			rest = append(rest, o.key+"="+strings.Join(mapped, ":"))
		}
		var flags uintptr
		var data []string
		for _, o := range rest {
			switch o {
			case "ro":
				flags |= unix.MS_RDONLY
			case "rw":
			default:
				data = append(data, o)
			}
		}
		if err := mountAs(s.usernsRoot, m.Source, target, "overlay", flags, strings.Join(data, ",")); err != nil {
			return fmt.Errorf("overlay on idmapped layers: %w", err)
		}
		return nil
	})
}

// mountAs is mount(2) by a thread whose filesystem uid and gid are id, and
// which keeps its capabilities. overlayfs does its own work in its layers
// (its work directory, copy-ups) as its mounter, and on an idmapped layer
// only ids of the namespace it is mapped into can own files: id is that
// namespace's root. The thread ends with the call, its identity with it.
func mountAs(id uint32, source, target, fstype string, flags uintptr, data string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: Go ends the thread
		errc <- func() error {
			if err := unix.Setfsgid(int(id)); err != nil {
				return fmt.Errorf("setfsgid: %w", err)
			}
			if err := unix.Setfsuid(int(id)); err != nil {
				return fmt.Errorf("setfsuid: %w", err)
			}
			// A filesystem uid other than 0 clears the file capabilities
			// from the effective set; take them back from the permitted.
			hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
			var caps [2]unix.CapUserData
			if err := unix.Capget(&hdr, &caps[0]); err != nil {
				return fmt.Errorf("capget: %w", err)
			}
			caps[0].Effective, caps[1].Effective = caps[0].Permitted, caps[1].Permitted
			if err := unix.Capset(&hdr, &caps[0]); err != nil {
				return fmt.Errorf("capset: %w", err)
			}
			return unix.Mount(source, target, fstype, flags, data)
		}()
	}()
	return <-errc
}

// mountID is the id of the mount path is on.
func mountID(path string) (uint64, error) {
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, unix.AT_STATX_SYNC_AS_STAT, unix.STATX_MNT_ID, &stx); err != nil {
		return 0, fmt.Errorf("statx %s: %w", path, err)
	}
	if stx.Mask&unix.STATX_MNT_ID == 0 {
		return 0, fmt.Errorf("statx %s: no mount id (Linux before 5.8)", path)
	}
	return stx.Mnt_id, nil
}

// fsTypeOf names the filesystem path is on, as /proc/self/mountinfo does.
func fsTypeOf(path string) string {
	id, err := mountID(path)
	if err != nil {
		return "an unknown filesystem"
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "an unknown filesystem"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		first, _, _ := strings.Cut(line, " ")
		if n, _ := strconv.ParseUint(first, 10, 64); n != id {
			continue
		}
		if _, after, ok := strings.Cut(line, " - "); ok {
			if typ, _, _ := strings.Cut(after, " "); typ != "" {
				return typ
			}
		}
	}
	return "an unknown filesystem"
}

// KernelIdmaps says, for kasa check, which of the mounts an unprivileged
// virtiofsd needs this kernel can idmap: overlayfs on idmapped layers (a
// container's root filesystem; Linux 5.19) and tmpfs (6.3).
func KernelIdmaps() (release string, overlayLayers, tmpfs bool) {
	var uts unix.Utsname
	unix.Uname(&uts)
	release = unix.ByteSliceToString(uts.Release[:])
	var major, minor int
	fmt.Sscanf(release, "%d.%d", &major, &minor)
	atLeast := func(ma, mi int) bool { return major > ma || major == ma && minor >= mi }
	return release, atLeast(5, 19), atLeast(6, 3)
}

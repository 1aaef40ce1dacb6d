// Package fsshare manages a sandbox's shared directory: the host directory
// exported to the guest (virtio-9p or virtio-fs) where each container's root
// filesystem and volumes are mounted for the agent to use.
package fsshare

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/containerd/mount"
	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/agent/api"
)

const (
	// MountTag is the tag the guest mounts the share by.
	MountTag = "kasa"
	// GuestRoot is where the guest mounts the share.
	GuestRoot = "/run/kasa/shared"
)

// Root is the parent of every sandbox's shared directory (docs/architecture.md, "Contracts").
var Root = "/run/kasa/shared"

// Share is one sandbox's shared directory.
type Share struct {
	SandboxID string
	// HostDir is /run/kasa/shared/<sandbox-id>.
	HostDir string
	// MSize is the 9p message size the guest mounts with.
	MSize uint32
	// userns, once set, is the user namespace of an unprivileged
	// virtiofsd: what is mounted in the share is idmapped into it, whose
	// root is host uid usernsRoot.
	userns     *os.File
	usernsRoot uint32

	mu sync.Mutex
	// daemonPID is virtiofsd's, once StartVirtioFSD started it.
	daemonPID int
	// volumeNS is virtiofsd's mount namespace, where volumes are
	// attached (volumens.go); nil until the first volume, or without
	// virtiofsd.
	volumeNS *os.File
}

// New creates the sandbox's shared directory.
func New(sandboxID string, msize uint32) (*Share, error) {
	s := Open(sandboxID, msize)
	if err := os.MkdirAll(s.HostDir, 0o711); err != nil {
		return nil, fmt.Errorf("create shared directory: %w", err)
	}
	return s, nil
}

// Open describes an existing share without touching the disk (for cleanup).
func Open(sandboxID string, msize uint32) *Share {
	return &Share{SandboxID: sandboxID, HostDir: filepath.Join(Root, sandboxID), MSize: msize}
}

// GuestStorage is how the agent mounts the share (9p).
func (s *Share) GuestStorage() *api.Storage {
	return &api.Storage{
		Driver:     api.StorageDriver_STORAGE_DRIVER_9P,
		Source:     MountTag,
		Fstype:     "9p",
		Options:    []string{"trans=virtio", "version=9p2000.L", "msize=" + strconv.FormatUint(uint64(s.MSize), 10), "cache=mmap", "nodev"},
		MountPoint: GuestRoot,
	}
}

// containerDir is where one container's mounts live, host side.
func (s *Share) containerDir(containerID string) string { return filepath.Join(s.HostDir, containerID) }

// guestPath maps a path under HostDir to the guest's view of it.
func (s *Share) guestPath(hostPath string) string {
	rel, _ := filepath.Rel(s.HostDir, hostPath)
	return filepath.Join(GuestRoot, rel)
}

// MountRootfs mounts a container's root filesystem (containerd's snapshot
// mounts, usually one overlay) into the share and returns its guest path.
// With no mounts the bundle's rootfs directory is used as it is (bind).
func (s *Share) MountRootfs(containerID string, mounts []mount.Mount, bundleRootfs string) (string, error) {
	target := filepath.Join(s.containerDir(containerID), "rootfs")
	if err := os.MkdirAll(target, 0o755); err != nil {
		return "", err
	}
	if len(mounts) == 0 {
		mounts = []mount.Mount{{Type: "bind", Source: bundleRootfs, Options: []string{"rbind"}}}
	}
	mountAll := mount.All
	if s.userns != nil {
		mountAll = s.mountRootfsIdmapped
	}
	if err := mountAll(mounts, target); err != nil {
		os.RemoveAll(s.containerDir(containerID))
		return "", fmt.Errorf("mount rootfs of %s: %w", containerID, err)
	}
	if err := restrict(target, false, false); err != nil {
		unmountAndRemove(s.containerDir(containerID))
		return "", fmt.Errorf("rootfs of %s: %w", containerID, err)
	}
	return s.guestPath(target), nil
}

// makeShared turns the share into a mount of its own in a peer group of its
// own (bind on itself, private, then shared), so that what is mounted in it
// later propagates to a daemon that took a slave copy of it, and to nothing
// else. It is idempotent.
func (s *Share) makeShared() error {
	mounts, err := mountsUnder(s.HostDir)
	if err != nil {
		return err
	}
	if !slices.Contains(mounts, s.HostDir) {
		if err := unix.Mount(s.HostDir, s.HostDir, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("share %s: bind on itself: %w", s.HostDir, err)
		}
	}
	for _, flag := range []uintptr{unix.MS_PRIVATE, unix.MS_SHARED} {
		if err := unix.Mount("", s.HostDir, "", flag, ""); err != nil {
			return fmt.Errorf("share %s: propagation: %w", s.HostDir, err)
		}
	}
	return nil
}

// restrict makes the mount at target and every mount below it nosuid and
// nodev, and read-only and noexec too if asked: what a guest writes into
// the share (a set-uid binary, a device node) must never work as such on
// the host.
func restrict(target string, readOnly, noExec bool) error {
	attr := uint64(unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV)
	flags := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_NOSUID | unix.MS_NODEV)
	if readOnly {
		attr |= unix.MOUNT_ATTR_RDONLY
		flags |= unix.MS_RDONLY
	}
	if noExec {
		attr |= unix.MOUNT_ATTR_NOEXEC
		flags |= unix.MS_NOEXEC
	}
	err := unix.MountSetattr(-1, target, unix.AT_RECURSIVE|unix.AT_SYMLINK_NOFOLLOW, &unix.MountAttr{Attr_set: attr})
	if !errors.Is(err, unix.ENOSYS) {
		if err != nil {
			return fmt.Errorf("restrict %s: %w", target, err)
		}
		return nil
	}
	// Before Linux 5.12: remount each mount of the tree, deepest first.
	mounts, err := mountsUnder(target)
	if err != nil {
		return err
	}
	for _, m := range mounts {
		if err := unix.Mount("", m, "", flags, ""); err != nil {
			return fmt.Errorf("restrict %s: %w", m, err)
		}
	}
	return nil
}

// RemoveContainer unmounts everything of one container and removes its directory.
func (s *Share) RemoveContainer(containerID string) error {
	if err := s.detachVolumes(containerID); err != nil {
		return err
	}
	return unmountAndRemove(s.containerDir(containerID))
}

// Destroy unmounts everything in the share and removes it. It is
// idempotent. The volumes in virtiofsd's namespace go with it once the
// daemon is gone too.
func (s *Share) Destroy() error {
	s.closeVolumeNamespace()
	return errors.Join(unmountAndRemove(s.HostDir), s.destroyUserns())
}

// unmountAndRemove detaches every mount at or below dir, deepest first, then
// removes dir. Removal never crosses into a mount that is still there.
func unmountAndRemove(dir string) error {
	mounts, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range mounts {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if left, _ := mountsUnder(dir); len(left) > 0 {
		return fmt.Errorf("mounts remain under %s: %v", dir, left)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}

// mountsUnder lists mount points at or below dir, deepest first.
func mountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out, sc.Err()
}

// unescapeMountinfo undoes the octal escapes of /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

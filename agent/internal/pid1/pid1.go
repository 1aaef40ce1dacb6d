// Package pid1 does what the agent owes the guest as its init process:
// the early mounts, a root that pivot_root can leave, orphan reaping and
// power-off.
package pid1

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// IsInit reports whether this process is the guest's init.
func IsInit() bool { return os.Getpid() == 1 }

// MoveRootToTmpfs moves the initramfs into a tmpfs mounted over "/" and
// makes it this process's root: the initramfs root cannot be pivot_root'ed
// away from, which libcontainer needs for every container.
//
// The directory of the agent binary is bind-mounted instead of copied:
// copying the binary costs about half a second under TCG and a second copy
// in guest memory, and libcontainer needs the binary reachable by path to
// seal it for container init with a read-only overlay (otherwise it copies
// the whole binary into a memfd for every container it starts).
//
// Booted from a read-only image instead (hypervisor.qemu.image: ext4 with
// DAX), the tree is copied rather than moved, and the agent's directory is
// bound from the image the same way, so it keeps running from the host's
// shared pages. The image has /newroot for the tmpfs.
func MoveRootToTmpfs() error {
	const newRoot = "/newroot"
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil {
		return fmt.Errorf("statfs /: %w", err)
	}
	keep := st.Flags&unix.ST_RDONLY != 0
	// /proc is not mounted yet: the kernel started us as /init, a symlink.
	exe, err := filepath.EvalSymlinks(os.Args[0])
	if err != nil {
		return fmt.Errorf("find the agent binary from %q: %w", os.Args[0], err)
	}
	exeDir := filepath.Dir(exe)
	if exeDir == "/" {
		return fmt.Errorf("the agent binary %s must not be in the initramfs root directory (guest-image puts it in /kasa/bin)", exe)
	}
	if err := os.MkdirAll(newRoot, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", newRoot, "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", newRoot, err)
	}
	if err := moveTreeExcept("/", newRoot, map[string]bool{"/newroot": true, exeDir: true}, keep); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(newRoot, exeDir), 0o755); err != nil {
		return err
	}
	if err := unix.Mount(exeDir, filepath.Join(newRoot, exeDir), "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s into tmpfs: %w", exeDir, err)
	}
	if err := os.Chdir(newRoot); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move tmpfs to /: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot into tmpfs: %w", err)
	}
	return os.Chdir("/")
}

// moveTreeExcept moves dir's entries into dst, skipping the paths in skip
// and descending into directories that contain a skipped path. With keep it
// copies them instead.
func moveTreeExcept(dir, dst string, skip map[string]bool, keep bool) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		src := filepath.Join(dir, e.Name())
		target := filepath.Join(dst, e.Name())
		if skip[src] {
			continue
		}
		if e.IsDir() && containsSkipped(src, skip) {
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
			if err := moveTreeExcept(src, target, skip, keep); err != nil {
				return err
			}
			continue
		}
		// Moving (copy, then unlink) frees the initramfs memory as we go.
		if err := moveTree(src, target, keep); err != nil {
			return fmt.Errorf("move %s into tmpfs: %w", src, err)
		}
	}
	return nil
}

func containsSkipped(dir string, skip map[string]bool) bool {
	for p := range skip {
		if strings.HasPrefix(p, dir+"/") {
			return true
		}
	}
	return false
}

func moveTree(src, dst string, keep bool) error {
	fi, err := os.Lstat(src)
	if err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return err
	}
	switch mode := fi.Mode(); {
	case mode.IsDir():
		if err := os.Mkdir(dst, mode.Perm()); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
		children, err := os.ReadDir(src)
		if err != nil {
			return err
		}
		for _, c := range children {
			if err := moveTree(filepath.Join(src, c.Name()), filepath.Join(dst, c.Name()), keep); err != nil {
				return err
			}
		}
	case mode&os.ModeSymlink != 0:
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		if err := os.Symlink(target, dst); err != nil {
			return err
		}
	case mode.IsRegular():
		if err := copyFile(src, dst, mode.Perm()); err != nil {
			return err
		}
	default: // device nodes, fifos, sockets
		if err := unix.Mknod(dst, st.Mode, int(st.Rdev)); err != nil {
			return err
		}
	}
	if err := os.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	if fi.Mode()&os.ModeSymlink == 0 {
		if err := os.Chmod(dst, fi.Mode().Perm()|fi.Mode()&(os.ModeSetuid|os.ModeSetgid|os.ModeSticky)); err != nil {
			return err
		}
	}
	if keep {
		return nil
	}
	return os.Remove(src)
}

func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

type mount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

// earlyMounts are the file systems every guest needs before anything else.
var earlyMounts = []mount{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"},
	{"shm", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"mqueue", "/dev/mqueue", "mqueue", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "nsdelegate"},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
}

// MountEarly mounts proc, sys, dev, devpts, shm, mqueue, cgroup2, /run and /tmp.
func MountEarly() error {
	for _, m := range earlyMounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
		}
	}
	links := map[string]string{
		"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0",
		"/dev/stdout": "/proc/self/fd/1", "/dev/stderr": "/proc/self/fd/2",
		"/dev/ptmx": "pts/ptmx",
	}
	for link, target := range links {
		os.Remove(link)
		if err := os.Symlink(target, link); err != nil {
			return err
		}
	}
	// Enable every controller for the children of the root cgroup.
	return enableControllers("/sys/fs/cgroup")
}

func enableControllers(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return err
	}
	var req []byte
	for _, c := range splitFields(string(b)) {
		req = append(req, "+"+c+" "...)
	}
	if len(req) == 0 {
		return nil
	}
	return os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), req, 0o644)
}

func splitFields(s string) []string {
	var out []string
	start := -1
	for i, r := range s + " " {
		if r == ' ' || r == '\n' || r == '\t' {
			if start >= 0 {
				out = append(out, s[start:i])
				start = -1
			}
		} else if start < 0 {
			start = i
		}
	}
	return out
}

// PowerOff syncs and resets the VM. The hypervisor runs with -no-reboot, so a
// reset ends it: this works on every machine type, with or without ACPI.
func PowerOff(ctx context.Context, reason string) {
	log.G(ctx).WithField("reason", reason).Info("powering off")
	unix.Sync()
	for {
		if err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART); err != nil {
			log.G(ctx).WithError(err).Error("reboot failed")
		}
		time.Sleep(time.Second)
	}
}

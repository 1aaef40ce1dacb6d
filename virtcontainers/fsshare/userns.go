package fsshare

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// DoorRoot holds, for each sandbox whose virtiofsd runs without root, the
// one path to its share that virtiofsd can walk: <sandbox>/share, a bind
// mount of the share (in its peer group, so what is mounted in the share
// appears there too) in a directory of root's that only root and
// virtiofsd's host gid may enter, and no one but root may change.
// /run/kasa itself stays closed to every other user: a VMM or another
// sandbox's virtiofsd cannot reach any share.
var DoorRoot = "/run/kasa-virtiofsd"

// IDRangeSize is how many ids a virtiofsd's user namespace maps: the
// 16-bit ids container images and guests use.
const IDRangeSize = 65536

// inUserns makes attr start a process as root (uid and gid 0, no
// supplementary groups) of a new user namespace whose ids 0..IDRangeSize-1
// are the host ids first..first+IDRangeSize-1. The process has every
// capability in that namespace and none on the host, where it is uid first.
func inUserns(attr *syscall.SysProcAttr, first uint32) {
	ids := []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(first), Size: IDRangeSize}}
	attr.Cloneflags |= syscall.CLONE_NEWUSER
	attr.UidMappings, attr.GidMappings = ids, ids
	// setgroups is allowed, so that the process can drop the shim's groups.
	attr.GidMappingsEnableSetgroups = true
	attr.Credential = &syscall.Credential{Uid: 0, Gid: 0, Groups: []uint32{}}
}

// nofileArg is virtiofsd's --rlimit-nofile without root: the shim's own
// hard limit (at most the 1,000,000 virtiofsd asks for as root). Without a
// capability on the host, virtiofsd cannot raise its hard limit; asked for
// more, it would keep the soft limit it inherits (often 1024).
func nofileArg() string {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Max == 0 {
		return "--rlimit-nofile=0" // leave it as it is
	}
	return fmt.Sprintf("--rlimit-nofile=%d", min(lim.Max, 1000000))
}

// openUserns opens the user namespace of process pid, which must not be
// the shim's own: the share's mounts are idmapped into it.
func openUserns(pid int) (*os.File, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/ns/user", pid))
	if err != nil {
		return nil, fmt.Errorf("virtiofsd's user namespace: %w", err)
	}
	var theirs, ours syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &theirs); err == nil {
		err = syscall.Stat("/proc/self/ns/user", &ours)
		if err == nil && theirs.Ino != ours.Ino {
			return f, nil
		}
	}
	f.Close()
	return nil, fmt.Errorf("virtiofsd (pid %d) is not in a user namespace of its own", pid)
}

// door is the sandbox's directory in DoorRoot.
func (s *Share) door() string { return filepath.Join(DoorRoot, s.SandboxID) }

// openDoor makes the path an unprivileged virtiofsd of host gid gid
// serves the share from, and returns it.
func (s *Share) openDoor(gid uint32) (_ string, retErr error) {
	if err := os.MkdirAll(DoorRoot, 0o711); err != nil {
		return "", err
	}
	door := s.door()
	if err := os.Mkdir(door, 0o710); err != nil && !errors.Is(err, os.ErrExist) {
		return "", err
	}
	defer func() {
		if retErr != nil {
			unmountAndRemove(door)
		}
	}()
	if err := os.Chown(door, 0, int(gid)); err != nil {
		return "", err
	}
	if err := os.Chmod(door, 0o710); err != nil { // whatever the umask
		return "", err
	}
	// virtiofsd, to which the share's owner is nobody, opens the share's
	// directory to read it (but cannot write to it): only the door leads
	// there, so no one else gains anything.
	if err := os.Chmod(s.HostDir, 0o755); err != nil {
		return "", err
	}
	share := filepath.Join(door, "share")
	if err := os.Mkdir(share, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return "", err
	}
	if err := unix.Mount(s.HostDir, share, "", unix.MS_BIND, ""); err != nil {
		return "", fmt.Errorf("bind the share for virtiofsd: %w", err)
	}
	return share, nil
}

// destroyUserns undoes what a virtiofsd without root needed: its user
// namespace's descriptor, the staging directory, the door. Idempotent.
func (s *Share) destroyUserns() error {
	if s.userns != nil {
		s.userns.Close()
		s.userns = nil
	}
	staged, _ := filepath.Glob(filepath.Join(StagingRoot, s.stagingPrefix()+"*"))
	var errs []error
	for _, dir := range append(staged, s.door()) {
		if _, err := os.Lstat(dir); err == nil {
			errs = append(errs, unmountAndRemove(dir))
		}
	}
	return errors.Join(errs...)
}

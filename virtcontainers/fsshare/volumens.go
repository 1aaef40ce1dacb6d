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
	"time"

	"golang.org/x/sys/unix"
)

// With virtiofsd, volumes are attached in the daemon's own mount
// namespace, never in the node's. The guest sees them just the same (the
// daemon serves its own view of the share), but the node's namespace
// holds no copy of them: under runc a volume's copy lives in the
// container's mount namespace, and a copy in the node's would differ from
// that where the node can tell. The node could not remove a directory
// below a source that a copy still has a mount on (EBUSY), and its mount
// table would carry every pod's volumes. The copies go with the
// namespace when virtiofsd ends, whatever ends the shim.

// volumeNSWait bounds the wait for virtiofsd to set its namespace up (it
// does so once the connection the shim made is accepted).
const volumeNSWait = 10 * time.Second

// volumeNamespace returns the mount namespace volumes are attached in:
// that of the sandboxed virtiofsd serving the share, opened once and held
// until Destroy, or nil for the node's: without such a daemon (virtio-9p:
// QEMU reads the node's namespace), and for an unprivileged virtiofsd
// (virtio_fs_userns). Its namespace belongs to its own user namespace,
// and the kernel locks the flags of what propagates into it from the
// node's (read-only, nosuid, nodev cannot be undone there, whatever the
// daemon's capabilities in its user namespace); a mount attached there
// directly would not be locked. So its volumes go through the node's
// namespace, and the node keeps a copy of them (see the README).
func (s *Share) volumeNamespace() (*os.File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.volumeNS != nil || s.daemonPID == 0 || s.userns != nil {
		return s.volumeNS, nil
	}
	var share unix.Stat_t
	if err := unix.Stat(s.HostDir, &share); err != nil {
		return nil, err
	}
	// The namespace exists from virtiofsd's unshare on; it is rooted at
	// the share once the daemon has pivoted into it.
	for deadline := time.Now().Add(volumeNSWait); ; time.Sleep(20 * time.Millisecond) {
		ns, err := daemonNamespace(s.daemonPID, time.Until(deadline))
		if err != nil {
			return nil, fmt.Errorf("virtiofsd's mount namespace: %w", err)
		}
		err = inMountNamespace(ns, func() error {
			var root unix.Stat_t
			if err := unix.Stat("/", &root); err != nil {
				return err
			}
			if root.Dev != share.Dev || root.Ino != share.Ino {
				return fmt.Errorf("its root is not the share %s", s.HostDir)
			}
			return nil
		})
		if err == nil {
			s.volumeNS = ns
			return ns, nil
		}
		ns.Close()
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("virtiofsd's mount namespace: %w", err)
		}
	}
}

// closeVolumeNamespace lets the namespace, and every volume in it, go
// once virtiofsd is gone too.
func (s *Share) closeVolumeNamespace() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.volumeNS != nil {
		s.volumeNS.Close()
		s.volumeNS = nil
	}
}

// daemonNamespace opens the mount namespace of daemon pid, or of the
// child it forked into new namespaces (both virtiofsd flavours do so
// with sandbox=namespace), once it differs from the shim's own.
func daemonNamespace(pid int, wait time.Duration) (*os.File, error) {
	own, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return nil, err
	}
	for deadline := time.Now().Add(wait); ; time.Sleep(20 * time.Millisecond) {
		for _, p := range append([]int{pid}, childrenOf(pid)...) {
			if ns, err := openNamespaceOf(p, pid, own); err == nil && ns != nil {
				return ns, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("virtiofsd (pid %d) set up no mount namespace of its own within %v", pid, wait)
		}
	}
}

// openNamespaceOf opens p's mount namespace if p is daemon or its child
// and the namespace is not own. A pidfd taken first and checked last
// proves the namespace opened in between is p's, not a recycled pid's.
func openNamespaceOf(p, daemon int, own string) (*os.File, error) {
	pidfd, err := unix.PidfdOpen(p, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(pidfd)
	if p != daemon && parentOf(p) != daemon {
		return nil, nil
	}
	path := "/proc/" + strconv.Itoa(p) + "/ns/mnt"
	if link, err := os.Readlink(path); err != nil || link == own {
		return nil, err
	}
	ns, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	if err := unix.PidfdSendSignal(pidfd, 0, nil, 0); err != nil {
		ns.Close()
		return nil, err
	}
	return ns, nil
}

// childrenOf lists pid's children (its main thread's).
func childrenOf(pid int) []int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if c, err := strconv.Atoi(f); err == nil {
			out = append(out, c)
		}
	}
	return out
}

// parentOf is pid's parent, 0 if unknown.
func parentOf(pid int) int {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "PPid:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

// inMountNamespace runs fn on an OS thread of its own that has joined ns
// (its root and working directory become the namespace's root: for
// virtiofsd, the share). The thread is never given back: it ends with
// the goroutine.
//
// Never the main thread: Go cannot end it, and /proc/self (mountinfo,
// ns/mnt, root) shows the process as its main thread sees it, so every
// later mount table read of the shim would be virtiofsd's. Landed there,
// the goroutine holds the main thread while another one does the work.
func inMountNamespace(ns *os.File, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			errc <- inMountNamespace(ns, fn)
			runtime.UnlockOSThread()
			return
		}
		// A Go thread shares its file system context with the others,
		// and setns refuses to move a shared one.
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- fmt.Errorf("unshare CLONE_FS: %w", err)
			return
		}
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNS); err != nil {
			errc <- fmt.Errorf("join virtiofsd's mount namespace: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// inView is hostPath, a path below the share, as the daemon's namespace
// names it.
func (s *Share) inView(hostPath string) string {
	rel, _ := filepath.Rel(s.HostDir, hostPath)
	return filepath.Join("/", rel)
}

// detachVolumes unmounts, in virtiofsd's namespace, every volume of the
// container (each with what is below it).
func (s *Share) detachVolumes(containerID string) error {
	s.mu.Lock()
	ns := s.volumeNS
	s.mu.Unlock()
	if ns == nil {
		return nil
	}
	dir := s.inView(filepath.Join(s.containerDir(containerID), "volumes"))
	return inMountNamespace(ns, func() error {
		entries, err := os.ReadDir(dir)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		} else if err != nil {
			return err
		}
		var errs []error
		for _, e := range entries {
			p := filepath.Join(dir, e.Name())
			if err := unix.Unmount(p, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("unmount volume %s: %w", p, err))
			}
		}
		return errors.Join(errs...)
	})
}

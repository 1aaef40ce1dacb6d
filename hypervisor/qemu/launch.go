package qemu

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/hypervisor"
	"github.com/kasa-runtime/kasa/hypervisor/vsock"
	"github.com/kasa-runtime/kasa/internal/parentdeath"
)

// KVMDevice is the accelerator device an unprivileged QEMU is given access
// to (through its group) when it runs with KVM; a variable for tests.
var KVMDevice = "/dev/kvm"

// launched is a started QEMU and the driver's end of its QMP socket pair.
type launched struct {
	cmd     *exec.Cmd
	qmp     net.Conn
	console net.Conn
}

// launch starts QEMU with every channel as an inherited descriptor, in
// planFDs order, under cfg.Confinement: its identity, its namespaces, and
// (through BuildArgs) its seccomp filter. It registers in cu whatever must be
// undone if the start goes no further.
func (q *QEMU) launch(logger *log.Entry, cu *cleanup) (_ *launched, retErr error) {
	cfg, conf := q.cfg, q.cfg.Confinement
	var files []*os.File
	// The child's copies; the parent closes them once QEMU has them.
	var childEnds []*os.File
	defer func() {
		for _, f := range childEnds {
			f.Close()
		}
	}()
	for _, n := range cfg.NICs {
		files = append(files, n.TapFile)
	}
	if needsVhostVsock(cfg) {
		files = append(files, q.vhostVsock) // claimed by CreateVM
	}
	pair := func(name string) (*net.UnixConn, error) {
		host, vmm, err := socketPair(name)
		if err != nil {
			return nil, err
		}
		files, childEnds = append(files, vmm), append(childEnds, vmm)
		return host, nil
	}
	qmpConn, err := pair("qmp")
	if err != nil {
		return nil, err
	}
	cu.add(func() { qmpConn.Close() })
	consoleConn, err := pair("console")
	if err != nil {
		return nil, err
	}
	cu.add(func() { consoleConn.Close() })
	if cfg.AgentTransport == hypervisor.TransportVhostUserVsock && hasPodDevices(cfg) {
		var frontend *net.UnixConn
		if isClone(cfg) {
			// Added after the restore (lateDevices): QEMU gets its end then.
			host, vmm, err := socketPair("vhost-user-vsock")
			if err != nil {
				return nil, err
			}
			frontend, q.lateVsock = host, vmm
			cu.add(func() { vmm.Close() })
		} else if frontend, err = pair("vhost-user-vsock"); err != nil {
			return nil, err
		}
		b, err := vsock.Listen(vsock.Config{
			Frontend:     frontend,
			HybridSocket: q.paths.HybridVsock,
			GuestCID:     vsock.DefaultGuestCID,
			Logf:         func(f string, a ...any) { logger.Debugf(f, a...) },
		})
		if err != nil {
			frontend.Close()
			return nil, fmt.Errorf("starting the vsock backend: %w", err)
		}
		q.vsock = b
		cu.add(func() { b.Close() })
	}
	if fs := cfg.SharedFS; fs != nil && fs.Type == hypervisor.SharedFSVirtioFS && fs.Conn != nil && !isClone(cfg) {
		files = append(files, fs.Conn)
	}
	if conf.Unprivileged() {
		// In planFDs's order.
		for _, f := range []struct{ field, path string }{{"Kernel", cfg.Kernel}, {"Initrd", cfg.Initrd}, {"Image", cfg.Image}} {
			if f.path == "" {
				continue
			}
			file, err := openReadableBy(f.path, conf.UID, conf.GID)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", f.field, err)
			}
			files, childEnds = append(files, file), append(childEnds, file)
		}
	}

	if s := cfg.Snapshot; s != nil {
		files = append(files, s.Memory, s.State)
	}

	// QEMU's own output goes through a pipe the driver drains into a capped
	// log, so that QEMU holds no writable file of the host.
	logR, logW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	childEnds = append(childEnds, logW)

	cmd := exec.Command(cfg.Path, q.args...)
	cmd.Stdout, cmd.Stderr = logW, logW
	cmd.ExtraFiles = files
	attr := &syscall.SysProcAttr{Setpgid: true}
	if conf.Unprivileged() {
		groups, err := vmmGroups(q.info.Load().accel)
		if err != nil {
			logR.Close()
			return nil, err
		}
		// setgroups, setgid, setuid before exec: QEMU starts with no
		// capabilities and no way back (-sandbox elevateprivileges=deny also
		// sets no_new_privs).
		attr.Credential = &syscall.Credential{Uid: conf.UID, Gid: conf.GID, Groups: groups}
	}
	if conf.PrivateNamespaces {
		attr.Cloneflags = syscall.CLONE_NEWNET | syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS
	}
	cmd.SysProcAttr = attr
	// The VM must not outlive its shim, however the shim dies: QEMU gets
	// SIGKILL when the shim does (PR_SET_PDEATHSIG, set after the identity
	// change so that it survives it), started from a thread that lives as
	// long as the shim.
	if err := parentdeath.Start(cmd); err != nil {
		logR.Close()
		return nil, fmt.Errorf("starting %s: %w", cfg.Path, err)
	}
	for _, f := range conf.CgroupProcs {
		// Before QEMU touches guest memory: the pod's cgroup pays for it.
		if err := os.WriteFile(f, []byte(strconv.Itoa(cmd.Process.Pid)), 0); err != nil {
			_ = cmd.Process.Kill()
			_, _ = cmd.Process.Wait()
			logR.Close()
			return nil, fmt.Errorf("placing QEMU in the pod's cgroup (%s): %w", f, err)
		}
	}
	q.logDone = make(chan struct{})
	go func() {
		defer close(q.logDone)
		defer logR.Close()
		if err := copyCapped(logR, q.paths.Log, MaxLogBytes); err != nil {
			logger.WithError(err).Warn("writing QEMU's log")
		}
	}()
	go func() {
		// QEMU's exit ends the copy; the socket is closed then, not
		// whenever the garbage collector gets to it.
		defer consoleConn.Close()
		if err := copyCapped(consoleConn, q.paths.Console, MaxLogBytes); err != nil {
			logger.WithError(err).Warn("writing the guest console log")
		}
	}()
	// Written by the driver, not QEMU, so that only the driver decides which
	// process the reaper of a dead shim kills.
	if err := os.WriteFile(q.paths.PIDFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600); err != nil {
		_ = cmd.Process.Kill()
		_, _ = cmd.Process.Wait()
		return nil, fmt.Errorf("writing QEMU's pid file: %w", err)
	}
	return &launched{cmd: cmd, qmp: qmpConn, console: consoleConn}, nil
}

// socketPair returns the driver's end as a connection and QEMU's as a file.
func socketPair(name string) (*net.UnixConn, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socket pair for %s: %w", name, err)
	}
	hostFile := os.NewFile(uintptr(fds[0]), name)
	defer hostFile.Close() // FileConn dups it
	c, err := net.FileConn(hostFile)
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, fmt.Errorf("socket pair for %s: %w", name, err)
	}
	return c.(*net.UnixConn), os.NewFile(uintptr(fds[1]), name), nil
}

// openReadableBy opens path for QEMU running as uid:gid, which re-opens it
// through /proc/self/fd: the directories on the way need not be open to it,
// but the file itself must be readable by it, as the kernel checks again.
func openReadableBy(path string, uid, gid uint32) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, err
	}
	if !readableBy(st.Uid, st.Gid, st.Mode, uid, gid) {
		f.Close()
		return nil, fmt.Errorf("%s (mode %#o, owner %d:%d) is not readable by the unprivileged VMM user %d:%d: make it world-readable (chmod a+r) or set rootless = false",
			path, st.Mode&0o777, st.Uid, st.Gid, uid, gid)
	}
	return f, nil
}

func readableBy(fileUID, fileGID, mode, uid, gid uint32) bool {
	switch {
	case fileUID == uid:
		return mode&0o400 != 0
	case fileGID == gid:
		return mode&0o040 != 0
	default:
		return mode&0o004 != 0
	}
}

// vmmGroups are the supplementary groups of an unprivileged QEMU: the KVM
// device's group when it runs with KVM, nothing otherwise.
func vmmGroups(accel hypervisor.Accelerator) ([]uint32, error) {
	if accel != hypervisor.AccelKVM {
		return nil, nil
	}
	var st unix.Stat_t
	if err := unix.Stat(KVMDevice, &st); err != nil {
		return nil, fmt.Errorf("KVM device for the unprivileged VMM: %w", err)
	}
	if st.Mode&0o060 != 0o060 {
		return nil, errors.New(KVMDevice + " is not read-write for its group, so an unprivileged VMM cannot use it: set rootless = false or fix its mode (udev: MODE=\"0660\")")
	}
	return []uint32{st.Gid}, nil
}

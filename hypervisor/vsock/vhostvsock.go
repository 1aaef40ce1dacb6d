package vsock

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// VhostVsockDevice is the kernel's vhost-vsock device node.
const VhostVsockDevice = "/dev/vhost-vsock"

// vhostVsockSetGuestCID is VHOST_VSOCK_SET_GUEST_CID, _IOW(0xAF, 0x60, __u64).
const vhostVsockSetGuestCID = 0x4008af60

// maxCIDProbes bounds the search for a free guest CID.
const maxCIDProbes = 4096

// OpenVhostVsock opens the kernel's vhost-vsock device at path and claims
// the first free guest CID from first on (VHOST_VSOCK_SET_GUEST_CID fails
// with EADDRINUSE for a CID another VM holds). The caller passes the file to
// QEMU as vhostfd and keeps it open as long as the VM runs: closing it
// releases the CID.
func OpenVhostVsock(path string, first uint32) (*os.File, uint32, error) {
	f, err := os.OpenFile(path, os.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, 0, fmt.Errorf("kernel vhost-vsock: %w", err)
	}
	cid, err := probeCID(first, func(cid uint64) error {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), vhostVsockSetGuestCID, uintptr(unsafe.Pointer(&cid)))
		if errno != 0 {
			return errno
		}
		return nil
	})
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("kernel vhost-vsock %s: %w", path, err)
	}
	return f, cid, nil
}

// probeCID tries set on guest CIDs from first on until one is free.
func probeCID(first uint32, set func(uint64) error) (uint32, error) {
	if first <= HostCID {
		first = HostCID + 1
	}
	for i := uint32(0); i < maxCIDProbes; i++ {
		cid := first + i
		if cid == 0xffffffff || cid < first { // VMADDR_CID_ANY, or wrapped
			break
		}
		err := set(uint64(cid))
		switch {
		case err == nil:
			return cid, nil
		case errors.Is(err, unix.EADDRINUSE):
			continue
		default:
			return 0, fmt.Errorf("setting guest CID %d: %w", cid, err)
		}
	}
	return 0, fmt.Errorf("no free guest CID among %d from %d", maxCIDProbes, first)
}

// VhostVsockUsable reports why the kernel's vhost-vsock cannot be used, or
// nil when it can (the device opens read-write).
func VhostVsockUsable(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

package network

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"unsafe"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// filterPriority marks the redirect filters this package installs, so
// Detach removes only its own.
const filterPriority = 0x4b53

// ingressParent is the parent handle of filters on an ingress qdisc.
var ingressParent = netlink.MakeHandle(0xffff, 0)

// Tap is a tap device in a pod netns, joined to a veth by tc redirects.
type Tap struct {
	// Name is the tap's interface name, tap<index>_kasa.
	Name string
	// File is the tap's queue, opened inside the pod netns; QEMU gets it
	// as -netdev tap,fd=N.
	File *os.File
	// Kind is KindTCFilter or KindMacvtap.
	Kind string
	// VethMAC is the veth's own MAC, given back on Detach (macvtap).
	VethMAC net.HardwareAddr

	netnsPath string
	index     int // the tap's ifindex
	vethIndex int

	mu       sync.Mutex
	detached bool
}

// TapName returns the name of the tap device for NIC number index.
func TapName(index int) string { return fmt.Sprintf("tap%d_kasa", index) }

// AttachTap creates tap<index>_kasa in the netns at netnsPath and redirects
// all traffic between it and ep's veth both ways. On error nothing it made
// is left behind.
func AttachTap(netnsPath string, ep Endpoint, index int) (_ *Tap, err error) {
	name := TapName(index)
	if len(name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("tap name %q is longer than %d bytes", name, unix.IFNAMSIZ-1)
	}
	h, err := openHandle(netnsPath)
	if err != nil {
		return nil, err
	}
	defer h.close()
	veth, err := h.veth(ep, netnsPath)
	if err != nil {
		return nil, err
	}

	var rb rollback
	defer func() {
		if err != nil {
			if rbErr := rb.run(); rbErr != nil {
				err = errors.Join(err, fmt.Errorf("roll back tap %s: %w", name, rbErr))
			}
		}
	}()

	var file *os.File
	if err := inNetNS(h.ns, func() (err error) {
		file, err = createTap(name)
		return err
	}); err != nil {
		return nil, fmt.Errorf("create tap %s in netns %s: %w", name, netnsPath, err)
	}
	rb.add(file.Close)
	tap, err := h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("find new tap %s in netns %s: %w", name, netnsPath, err)
	}
	rb.add(func() error { return h.LinkDel(tap) })

	mtu := ep.MTU
	if mtu == 0 {
		mtu = veth.Attrs().MTU
	}
	if err := h.LinkSetMTU(tap, mtu); err != nil {
		return nil, fmt.Errorf("set MTU %d on tap %s: %w", mtu, name, err)
	}
	if err := h.LinkSetUp(tap); err != nil {
		return nil, fmt.Errorf("bring up tap %s: %w", name, err)
	}
	for _, l := range []netlink.Link{veth, tap} {
		q := ingressQdisc(l.Attrs().Index)
		if err := h.QdiscAdd(q); err != nil {
			return nil, fmt.Errorf("add ingress qdisc to %s: %w", l.Attrs().Name, err)
		}
		rb.add(func() error { return h.QdiscDel(q) })
	}
	for _, p := range [][2]netlink.Link{{veth, tap}, {tap, veth}} {
		f := redirectFilter(p[0].Attrs().Index, p[1].Attrs().Index)
		if err := h.FilterAdd(f); err != nil {
			return nil, fmt.Errorf("add redirect filter %s -> %s: %w", p[0].Attrs().Name, p[1].Attrs().Name, err)
		}
		rb.add(func() error { return h.FilterDel(f) })
	}
	rb.release()
	return &Tap{
		Name:      name,
		File:      file,
		Kind:      KindTCFilter,
		netnsPath: netnsPath,
		index:     tap.Attrs().Index,
		vethIndex: veth.Attrs().Index,
	}, nil
}

// Detach removes the redirect filters, the ingress qdiscs and the tap, and
// closes the tap's file. It is idempotent, and a netns that is already gone
// counts as detached.
func (t *Tap) Detach() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.detached {
		return nil
	}
	var errs []error
	if t.File != nil {
		if err := t.File.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
			errs = append(errs, fmt.Errorf("close tap %s: %w", t.Name, err))
		}
	}
	if _, err := os.Stat(t.netnsPath); errors.Is(err, os.ErrNotExist) {
		t.detached = true
		return errors.Join(errs...)
	}
	h, err := openHandle(t.netnsPath)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	defer h.close()

	if t.Kind == KindMacvtap {
		if err := t.detachMacvtap(h); err != nil {
			return fmt.Errorf("detach macvtap %s in netns %s: %w", t.Name, t.netnsPath, err)
		}
		t.detached = true
		return nil
	}
	if veth, err := h.LinkByIndex(t.vethIndex); err == nil {
		errs = append(errs, h.removeRedirect(veth))
	} else if !isLinkNotFound(err) {
		errs = append(errs, fmt.Errorf("find veth %d in netns %s: %w", t.vethIndex, t.netnsPath, err))
	}
	tap, err := h.LinkByName(t.Name)
	switch {
	case err == nil && tap.Attrs().Index == t.index:
		errs = append(errs, h.removeRedirect(tap))
		if err := h.LinkDel(tap); err != nil {
			errs = append(errs, fmt.Errorf("delete tap %s: %w", t.Name, err))
		}
	case err != nil && !isLinkNotFound(err):
		errs = append(errs, fmt.Errorf("find tap %s in netns %s: %w", t.Name, t.netnsPath, err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("detach tap %s in netns %s: %w", t.Name, t.netnsPath, err)
	}
	t.detached = true
	return nil
}

// removeRedirect deletes this package's filters on link's ingress and then
// the ingress qdisc.
func (h *nsHandle) removeRedirect(link netlink.Link) error {
	name := link.Attrs().Name
	filters, err := retryDump(func() ([]netlink.Filter, error) { return h.FilterList(link, ingressParent) })
	if err != nil {
		return fmt.Errorf("list filters of %s: %w", name, err)
	}
	for _, f := range filters {
		if f.Attrs().Priority != filterPriority {
			continue
		}
		if err := h.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete redirect filter of %s: %w", name, err)
		}
	}
	qdiscs, err := retryDump(func() ([]netlink.Qdisc, error) { return h.QdiscList(link) })
	if err != nil {
		return fmt.Errorf("list qdiscs of %s: %w", name, err)
	}
	for _, q := range qdiscs {
		if q.Type() != "ingress" {
			continue
		}
		if err := h.QdiscDel(q); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("delete ingress qdisc of %s: %w", name, err)
		}
	}
	return nil
}

// veth finds ep's veth, and checks it is still the interface Scan saw.
func (h *nsHandle) veth(ep Endpoint, netnsPath string) (netlink.Link, error) {
	veth, err := h.LinkByIndex(ep.Index)
	if err != nil {
		return nil, fmt.Errorf("find veth %s (index %d) in netns %s: %w", ep.Name, ep.Index, netnsPath, err)
	}
	if veth.Attrs().Name != ep.Name {
		return nil, fmt.Errorf("interface %d in netns %s is %s, not veth %s", ep.Index, netnsPath, veth.Attrs().Name, ep.Name)
	}
	return veth, nil
}

func isLinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

func ingressQdisc(linkIndex int) *netlink.Ingress {
	return &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: linkIndex,
		Handle:    ingressParent,
		Parent:    netlink.HANDLE_INGRESS,
	}}
}

// redirectFilter matches every packet arriving on from and sends it out of
// to, like `tc filter add dev FROM parent ffff: protocol all u32 match u8 0 0
// action mirred egress redirect dev TO`.
func redirectFilter(from, to int) *netlink.U32 {
	return &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: from,
			Parent:    ingressParent,
			Priority:  filterPriority,
			Protocol:  unix.ETH_P_ALL,
		},
		Actions: []netlink.Action{&netlink.MirredAction{
			ActionAttrs:  netlink.ActionAttrs{Action: netlink.TC_ACT_STOLEN},
			MirredAction: netlink.TCA_EGRESS_REDIR,
			Ifindex:      to,
		}},
	}
}

// ifReq is struct ifreq as TUNSETIFF reads it.
type ifReq struct {
	Name  [unix.IFNAMSIZ]byte
	Flags uint16
	_     [22]byte
}

// createTap makes a persistent tap device in the calling thread's netns and
// returns its queue. IFF_TUN_EXCL makes an existing device of that name an
// error (EBUSY) instead of silently attaching to it.
func createTap(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	file := os.NewFile(uintptr(fd), "/dev/net/tun:"+name)
	var req ifReq
	copy(req.Name[:unix.IFNAMSIZ-1], name)
	req.Flags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR | unix.IFF_TUN_EXCL
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req))); errno != 0 {
		file.Close()
		if errno == unix.EBUSY {
			return nil, fmt.Errorf("TUNSETIFF: an interface named %s already exists: %w", name, errno)
		}
		return nil, fmt.Errorf("TUNSETIFF: %w", errno)
	}
	// Persistent, so the device outlives this fd until Detach deletes it;
	// QEMU holds its own copy of the fd.
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETPERSIST, 1); errno != 0 {
		file.Close()
		return nil, fmt.Errorf("TUNSETPERSIST: %w", errno)
	}
	return file, nil
}

// inNetNS runs fn on a fresh OS thread switched into ns. The thread is
// thrown away if it cannot be switched back, so no other goroutine ever runs
// in the pod netns by accident.
func inNetNS(ns netns.NsHandle, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("enter netns: %w", err)
			return
		}
		fnErr := fn()
		if err := netns.Set(orig); err != nil {
			// Stay locked: the thread exits with this goroutine.
			done <- errors.Join(fnErr, fmt.Errorf("restore netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		done <- fnErr
	}()
	return <-done
}

// rollback is a stack of undo steps run newest first when a setup fails
// half-way (gVisor's cleanup.Make).
type rollback struct {
	undo []func() error
}

func (r *rollback) add(f func() error) { r.undo = append(r.undo, f) }

// release forgets the steps once the setup has succeeded.
func (r *rollback) release() { r.undo = nil }

// run undoes every step, newest first, and reports all that failed.
func (r *rollback) run() error {
	var errs []error
	for i := len(r.undo) - 1; i >= 0; i-- {
		if err := r.undo[i](); err != nil {
			errs = append(errs, err)
		}
	}
	r.undo = nil
	return errors.Join(errs...)
}

// IfIndex is the tap's interface index in the pod netns.
func (t *Tap) IfIndex() int { return t.index }

// VethIndex is the interface index of the veth the tap is joined to.
func (t *Tap) VethIndex() int { return t.vethIndex }

// ExistingTap describes a tap or macvtap (kind) made by an earlier process
// (a shim that died), from what it persisted, so that Detach can remove it.
// Detach only deletes a device that still has the recorded index.
func ExistingTap(netnsPath, name, kind string, index, vethIndex int, vethMAC net.HardwareAddr) *Tap {
	if kind == "" {
		kind = KindTCFilter
	}
	return &Tap{Name: name, Kind: kind, VethMAC: vethMAC, netnsPath: netnsPath, index: index, vethIndex: vethIndex}
}

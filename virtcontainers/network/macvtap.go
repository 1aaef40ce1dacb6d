package network

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Kinds of attachment between a veth and the VM's NIC.
const (
	// KindTCFilter is a tap joined to the veth by tc mirred redirects.
	KindTCFilter = "tcfilter"
	// KindMacvtap is a macvtap device on top of the veth (bridge mode): the
	// VM's NIC takes the veth's MAC and the veth gets a random one.
	KindMacvtap = "macvtap"
)

// macvtapIndexBase and macvtapIndexSpan pick the macvtap's ifindex. The
// kernel names its character device /dev/tap<ifindex> in the host's
// devtmpfs, shared by all network namespaces, so the index is drawn from a
// range no other device of a pod netns uses and retried on a clash.
const (
	macvtapIndexBase = 1 << 20
	macvtapIndexSpan = 1 << 20
)

// AttachMacvtap creates tap<index>_kasa, a macvtap on top of ep's veth in
// the netns at netnsPath (Kata's "macvtap" model). The macvtap takes the
// veth's MAC, the veth a random one, so the guest NIC (ep.MAC) is the
// address the pod's peers know. On error nothing it changed is left.
func AttachMacvtap(netnsPath string, ep Endpoint, index int) (_ *Tap, err error) {
	name := TapName(index)
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
				err = errors.Join(err, fmt.Errorf("roll back macvtap %s: %w", name, rbErr))
			}
		}
	}()

	mtu := ep.MTU
	if mtu == 0 {
		mtu = veth.Attrs().MTU
	}
	var mvt netlink.Link
	for attempt := 0; ; attempt++ {
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.ParentIndex, attrs.MTU, attrs.Index = name, veth.Attrs().Index, mtu, randomIndex()
		attrs.TxQLen = veth.Attrs().TxQLen
		link := &netlink.Macvtap{Macvlan: netlink.Macvlan{LinkAttrs: attrs, Mode: netlink.MACVLAN_MODE_BRIDGE}}
		err := h.LinkAdd(link)
		if err == nil {
			mvt = link
			break
		}
		if !errors.Is(err, unix.EEXIST) && !errors.Is(err, unix.EBUSY) || attempt == 4 {
			return nil, fmt.Errorf("create macvtap %s on %s in netns %s: %w", name, ep.Name, netnsPath, err)
		}
	}
	rb.add(func() error { return h.LinkDel(mvt) })
	mvt, err = h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("find new macvtap %s: %w", name, err)
	}

	// The guest keeps the veth's MAC: move it from the veth to the macvtap.
	orig := veth.Attrs().HardwareAddr
	if err := h.LinkSetHardwareAddr(veth, randomMAC()); err != nil {
		return nil, fmt.Errorf("give veth %s a random MAC: %w", ep.Name, err)
	}
	rb.add(func() error { return h.LinkSetHardwareAddr(veth, orig) })
	if err := h.LinkSetHardwareAddr(mvt, ep.MAC); err != nil {
		return nil, fmt.Errorf("give macvtap %s the MAC %s: %w", name, ep.MAC, err)
	}
	if err := h.LinkSetUp(mvt); err != nil {
		return nil, fmt.Errorf("bring up macvtap %s: %w", name, err)
	}
	file, err := openMacvtapDevice(mvt.Attrs().Index)
	if err != nil {
		return nil, fmt.Errorf("macvtap %s: %w", name, err)
	}
	rb.release()
	return &Tap{
		Name: name, File: file, Kind: KindMacvtap, VethMAC: orig,
		netnsPath: netnsPath, index: mvt.Attrs().Index, vethIndex: veth.Attrs().Index,
	}, nil
}

// openMacvtapDevice opens /dev/tap<ifindex>, the macvtap's queue, which
// devtmpfs creates shortly after the link.
func openMacvtapDevice(ifindex int) (*os.File, error) {
	path := "/dev/tap" + strconv.Itoa(ifindex)
	deadline := time.Now().Add(2 * time.Second)
	for {
		f, err := os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, os.ErrNotExist) || time.Now().After(deadline) {
			return nil, fmt.Errorf("open %s (needs /dev as devtmpfs): %w", path, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// detachMacvtap deletes the macvtap and gives the veth its MAC back.
func (t *Tap) detachMacvtap(h *nsHandle) error {
	var errs []error
	link, err := h.LinkByName(t.Name)
	switch {
	case err == nil && link.Attrs().Index == t.index:
		if err := h.LinkDel(link); err != nil {
			errs = append(errs, fmt.Errorf("delete macvtap %s: %w", t.Name, err))
		}
	case err != nil && !isLinkNotFound(err):
		errs = append(errs, fmt.Errorf("find macvtap %s in netns %s: %w", t.Name, t.netnsPath, err))
	}
	if veth, err := h.LinkByIndex(t.vethIndex); err == nil && len(t.VethMAC) > 0 {
		if err := h.LinkSetHardwareAddr(veth, t.VethMAC); err != nil {
			errs = append(errs, fmt.Errorf("restore the MAC of veth %s: %w", veth.Attrs().Name, err))
		}
	} else if err != nil && !isLinkNotFound(err) {
		errs = append(errs, fmt.Errorf("find veth %d in netns %s: %w", t.vethIndex, t.netnsPath, err))
	}
	return errors.Join(errs...)
}

func randomIndex() int {
	var b [4]byte
	rand.Read(b[:])
	return macvtapIndexBase + int(binary.LittleEndian.Uint32(b[:])%macvtapIndexSpan)
}

// randomMAC is a random unicast, locally administered address.
func randomMAC() net.HardwareAddr {
	mac := make(net.HardwareAddr, 6)
	rand.Read(mac)
	mac[0] = mac[0]&^1 | 2
	return mac
}

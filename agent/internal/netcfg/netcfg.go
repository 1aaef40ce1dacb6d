// Package netcfg configures the guest's network as the host describes it:
// interfaces (name, MTU, addresses), main-table routes and static
// neighbour entries. It uses plain rtnetlink that any kernel with IPv4 and
// IPv6 has; nothing here needs netfilter or extra link types.
package netcfg

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"sort"

	"github.com/containerd/containerd/errdefs"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/agent/api"
)

// Config works on the network namespace of a netlink handle.
type Config struct {
	h *netlink.Handle
}

// New returns a Config on h; nil means the calling thread's namespace (the
// agent's, i.e. the guest's).
func New(h *netlink.Handle) *Config {
	if h == nil {
		h = &netlink.Handle{}
	}
	return &Config{h: h}
}

// dumpRetries bounds how often a netlink dump is redone when the kernel
// reports it interrupted by a concurrent change (NLM_F_DUMP_INTR): while
// an interface comes up the kernel adds its IPv6 addresses and routes, and
// on a slow guest a dump often overlaps that.
const dumpRetries = 10

// redump runs a netlink dump again while the kernel reports it
// interrupted, so callers never act on a partial list.
func redump[T any](dump func() (T, error)) (T, error) {
	for i := 0; ; i++ {
		v, err := dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) || i == dumpRetries {
			return v, err
		}
	}
}

func (c *Config) linkIndexer() (byName func(string) (int, bool), byIndex func(int) string, err error) {
	links, err := redump(c.h.LinkList)
	if err != nil {
		return nil, nil, fmt.Errorf("list links: %w", err)
	}
	names := map[string]int{}
	idx := map[int]string{}
	for _, l := range links {
		names[l.Attrs().Name] = l.Attrs().Index
		idx[l.Attrs().Index] = l.Attrs().Name
	}
	return func(n string) (int, bool) { i, ok := names[n]; return i, ok },
		func(i int) string { return idx[i] }, nil
}

// ensureLoopbackUp brings lo up, which the guest needs and nobody else does.
func (c *Config) ensureLoopbackUp() error {
	lo, err := c.h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if lo.Attrs().Flags&net.FlagUp != 0 {
		return nil
	}
	if err := c.h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	return nil
}

func (c *Config) linkByMAC(mac net.HardwareAddr) (netlink.Link, error) {
	links, err := redump(c.h.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		if bytes.Equal(l.Attrs().HardwareAddr, mac) && l.Attrs().Name != "lo" {
			return l, nil
		}
	}
	return nil, fmt.Errorf("interface.hw_addr: no guest interface has MAC %s: %w", mac, errdefs.ErrNotFound)
}

func (c *Config) describe(l netlink.Link) (*api.Interface, error) {
	addrs, err := redump(func() ([]netlink.Addr, error) { return c.h.AddrList(l, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", l.Attrs().Name, err)
	}
	return LinkToAPI(l, addrs), nil
}

// UpdateInterface configures the guest interface whose MAC is iface.hw_addr:
// name, MTU, flags, up, and then replaces its addresses with the given
// ones (IPv6 link-local addresses the kernel made are kept unless listed).
// It also brings lo up. It returns the interface as it now is.
func (c *Config) UpdateInterface(iface *api.Interface) (*api.Interface, error) {
	if iface == nil {
		return nil, invalid("interface", "required")
	}
	if iface.GetHwAddr() == "" {
		return nil, invalid("interface.hw_addr", "required")
	}
	mac, err := parseMAC("interface.hw_addr", iface.GetHwAddr())
	if err != nil {
		return nil, err
	}
	if n := iface.GetName(); n != "" {
		if err := validLinkName("interface.name", n); err != nil {
			return nil, err
		}
	}
	if m := iface.GetMtu(); m != 0 && (m < 68 || m > 65535) {
		return nil, invalid("interface.mtu", "%d is out of range 68-65535", m)
	}
	if f := iface.GetRawFlags(); f&^settableFlags != 0 {
		return nil, invalid("interface.raw_flags", "%#x: only IFF_UP, IFF_NOARP, IFF_PROMISC, IFF_ALLMULTI and IFF_MULTICAST can be set", f)
	}
	want := make([]*netlink.Addr, 0, len(iface.GetIpAddresses()))
	for i, a := range iface.GetIpAddresses() {
		na, err := AddrFromAPI(fmt.Sprintf("interface.ip_addresses[%d]", i), a)
		if err != nil {
			return nil, err
		}
		want = append(want, na)
	}

	if err := c.ensureLoopbackUp(); err != nil {
		return nil, err
	}
	link, err := c.linkByMAC(mac)
	if err != nil {
		return nil, err
	}
	name := link.Attrs().Name
	if n := iface.GetName(); n != "" && n != name {
		if other, err := c.h.LinkByName(n); err == nil && other.Attrs().Index != link.Attrs().Index {
			return nil, fmt.Errorf("interface.name: rename %s to %s: another interface has that name: %w", name, n, errdefs.ErrAlreadyExists)
		}
		if err := c.h.LinkSetDown(link); err != nil {
			return nil, fmt.Errorf("bring %s down to rename it: %w", name, err)
		}
		if err := c.h.LinkSetName(link, n); err != nil {
			return nil, fmt.Errorf("rename %s to %s: %w", name, n, err)
		}
		name = n
	}
	if m := int(iface.GetMtu()); m != 0 && m != link.Attrs().MTU {
		if err := c.h.LinkSetMTU(link, m); err != nil {
			return nil, fmt.Errorf("set MTU of %s to %d: %w", name, m, err)
		}
	}
	if err := c.setFlags(link, iface.GetRawFlags()); err != nil {
		return nil, fmt.Errorf("set flags of %s: %w", name, err)
	}
	if err := c.h.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("bring %s up: %w", name, err)
	}
	if err := c.replaceAddrs(link, want); err != nil {
		return nil, fmt.Errorf("interface %s: %w", name, err)
	}
	link, err = c.h.LinkByIndex(link.Attrs().Index)
	if err != nil {
		return nil, fmt.Errorf("read back %s: %w", name, err)
	}
	return c.describe(link)
}

func (c *Config) setFlags(link netlink.Link, flags uint32) error {
	if flags&unix.IFF_NOARP != 0 {
		if err := c.h.LinkSetARPOff(link); err != nil {
			return err
		}
	}
	if flags&unix.IFF_PROMISC != 0 {
		if err := c.h.SetPromiscOn(link); err != nil {
			return err
		}
	}
	if flags&unix.IFF_ALLMULTI != 0 {
		if err := c.h.LinkSetAllmulticastOn(link); err != nil {
			return err
		}
	}
	if flags&unix.IFF_MULTICAST != 0 {
		if err := c.h.LinkSetMulticastOn(link); err != nil {
			return err
		}
	}
	return nil
}

func addrKey(a *net.IPNet) string { return a.String() }

func (c *Config) replaceAddrs(link netlink.Link, want []*netlink.Addr) error {
	have, err := redump(func() ([]netlink.Addr, error) { return c.h.AddrList(link, netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	wanted := map[string]bool{}
	for _, a := range want {
		wanted[addrKey(a.IPNet)] = true
	}
	for _, a := range have {
		if a.IPNet == nil || wanted[addrKey(a.IPNet)] {
			continue
		}
		if a.IP.To4() == nil && a.IP.IsLinkLocalUnicast() {
			continue // the kernel's fe80:: address, needed for NDP
		}
		if err := c.h.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("delete address %s: %w", a.IPNet, err)
		}
	}
	for i, a := range want {
		if err := c.h.AddrReplace(link, a); err != nil {
			return fmt.Errorf("interface.ip_addresses[%d]: add %s: %w", i, a.IPNet, err)
		}
	}
	return nil
}

// ListInterfaces describes every interface of the guest, lo included.
func (c *Config) ListInterfaces() ([]*api.Interface, error) {
	links, err := redump(c.h.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	out := make([]*api.Interface, 0, len(links))
	for _, l := range links {
		d, err := c.describe(l)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

// ListRoutes describes the guest's main-table routes (IPv4 and IPv6).
func (c *Config) ListRoutes() ([]*api.Route, error) {
	_, byIndex, err := c.linkIndexer()
	if err != nil {
		return nil, err
	}
	rs, err := redump(func() ([]netlink.Route, error) { return c.h.RouteList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	out := make([]*api.Route, 0, len(rs))
	for _, r := range rs {
		out = append(out, RouteToAPI(r, byIndex))
	}
	return out, nil
}

// routeOrder sorts routes so each can be added after the ones it needs:
// routes without a gateway (they make gateways reachable) first, then
// routes through a gateway, default routes last. The sort is stable.
func routeOrder(rs []*netlink.Route) []int {
	rank := func(r *netlink.Route) int {
		switch {
		case r.Gw == nil:
			return 0
		case !isDefault(r.Dst):
			return 1
		}
		return 2
	}
	order := make([]int, len(rs))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return rank(rs[order[a]]) < rank(rs[order[b]]) })
	return order
}

// UpdateRoutes replaces the main-table routes of every interface but lo
// with routes: it deletes the existing ones, except the prefix routes the
// kernel made for addresses (proto kernel), and adds the requested ones,
// link routes before gateway routes and default routes last. It returns the
// guest's routes afterwards.
func (c *Config) UpdateRoutes(routes []*api.Route) ([]*api.Route, error) {
	byName, _, err := c.linkIndexer()
	if err != nil {
		return nil, err
	}
	want := make([]*netlink.Route, 0, len(routes))
	for i, r := range routes {
		nr, err := RouteFromAPI(fmt.Sprintf("routes[%d]", i), r, byName)
		if err != nil {
			return nil, err
		}
		want = append(want, nr)
	}
	loIndex, _ := byName("lo")
	have, err := redump(func() ([]netlink.Route, error) { return c.h.RouteList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range have {
		if r.Protocol == unix.RTPROT_KERNEL || (loIndex != 0 && r.LinkIndex == loIndex) {
			continue
		}
		if err := c.h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return nil, fmt.Errorf("delete route %s: %w", r, err)
		}
	}
	for _, i := range routeOrder(want) {
		if err := c.h.RouteReplace(want[i]); err != nil {
			if errors.Is(err, unix.ENETUNREACH) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EHOSTUNREACH) {
				err = fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
			}
			return nil, fmt.Errorf("routes[%d]: add %s: %w", i, want[i], err)
		}
	}
	return c.ListRoutes()
}

// AddNeighbors adds or replaces static neighbour (ARP/NDP) entries.
func (c *Config) AddNeighbors(neighbors []*api.Neighbor) error {
	byName, _, err := c.linkIndexer()
	if err != nil {
		return err
	}
	want := make([]*netlink.Neigh, 0, len(neighbors))
	for i, n := range neighbors {
		nn, err := NeighFromAPI(fmt.Sprintf("neighbors[%d]", i), n, byName)
		if err != nil {
			return err
		}
		want = append(want, nn)
	}
	for i, n := range want {
		if err := c.h.NeighSet(n); err != nil {
			return fmt.Errorf("neighbors[%d]: set %s lladdr %s: %w", i, n.IP, n.HardwareAddr, err)
		}
	}
	return nil
}

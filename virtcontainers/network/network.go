// Package network describes a pod's network namespace and joins its veth to a
// VM's tap device with tc mirred redirects (Kata's "tcfilter" model).
package network

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Family is an IP address family.
type Family int

// The address families Scan reports.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	switch f {
	case IPv4:
		return "ipv4"
	case IPv6:
		return "ipv6"
	}
	return fmt.Sprintf("family(%d)", int(f))
}

// Addr is an interface address with its prefix length.
type Addr struct {
	IP        net.IP
	PrefixLen int
	Family    Family
}

// String returns the address in CIDR notation, e.g. "10.0.0.2/24".
func (a Addr) String() string { return fmt.Sprintf("%s/%d", a.IP, a.PrefixLen) }

// Route is a route through one endpoint.
type Route struct {
	Family Family
	// Dst is nil for a default route.
	Dst     *net.IPNet
	Gateway net.IP
	Src     net.IP
	// Scope is the rtnetlink scope (unix.RT_SCOPE_*).
	Scope  uint8
	Metric int
	Device string
}

// IsDefault reports whether r is a default route.
func (r Route) IsDefault() bool { return r.Dst == nil }

// Neighbor is a permanent ARP (IPv4) or NDP (IPv6) entry.
type Neighbor struct {
	Family Family
	IP     net.IP
	MAC    net.HardwareAddr
	Device string
}

// Endpoint is one veth of the pod network namespace, as the guest must
// recreate it: the guest NIC takes its MAC, MTU, addresses and routes.
type Endpoint struct {
	Name      string
	Index     int
	MAC       net.HardwareAddr
	MTU       int
	Addrs     []Addr
	Routes    []Route
	Neighbors []Neighbor
}

// Scan describes every veth in the network namespace at netnsPath.
func Scan(netnsPath string) ([]Endpoint, error) {
	h, err := openHandle(netnsPath)
	if err != nil {
		return nil, err
	}
	defer h.close()

	links, err := retryDump(func() ([]netlink.Link, error) { return h.LinkList() })
	if err != nil {
		return nil, fmt.Errorf("list links in netns %s: %w", netnsPath, err)
	}
	var eps []Endpoint
	for _, link := range links {
		if link.Type() != "veth" {
			continue
		}
		ep, err := h.describe(link)
		if err != nil {
			return nil, fmt.Errorf("scan netns %s: %w", netnsPath, err)
		}
		eps = append(eps, ep)
	}
	return eps, nil
}

func (h *nsHandle) describe(link netlink.Link) (Endpoint, error) {
	attrs := link.Attrs()
	ep := Endpoint{
		Name:  attrs.Name,
		Index: attrs.Index,
		MAC:   append(net.HardwareAddr(nil), attrs.HardwareAddr...),
		MTU:   attrs.MTU,
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return h.AddrList(link, netlink.FAMILY_ALL) })
	if err != nil {
		return Endpoint{}, fmt.Errorf("list addresses of %s: %w", attrs.Name, err)
	}
	for _, a := range addrs {
		if addr, ok := addrFromNetlink(a); ok {
			ep.Addrs = append(ep.Addrs, addr)
		}
	}
	routes, err := retryDump(func() ([]netlink.Route, error) { return h.RouteList(link, netlink.FAMILY_ALL) })
	if err != nil {
		return Endpoint{}, fmt.Errorf("list routes of %s: %w", attrs.Name, err)
	}
	for _, r := range routes {
		if route, ok := routeFromNetlink(r, attrs.Name); ok {
			ep.Routes = append(ep.Routes, route)
		}
	}
	neighs, err := retryDump(func() ([]netlink.Neigh, error) { return h.NeighList(attrs.Index, netlink.FAMILY_ALL) })
	if err != nil {
		return Endpoint{}, fmt.Errorf("list neighbours of %s: %w", attrs.Name, err)
	}
	for _, n := range neighs {
		if neigh, ok := neighborFromNetlink(n, attrs.Name); ok {
			ep.Neighbors = append(ep.Neighbors, neigh)
		}
	}
	return ep, nil
}

// familyOf returns the family of ip, or 0 if ip is not an IP address.
func familyOf(ip net.IP) Family {
	if ip.To4() != nil {
		return IPv4
	}
	if len(ip) == net.IPv6len {
		return IPv6
	}
	return 0
}

// addrFromNetlink converts a; link-local IPv6 addresses are left out because
// the guest kernel makes its own.
func addrFromNetlink(a netlink.Addr) (Addr, bool) {
	if a.IPNet == nil {
		return Addr{}, false
	}
	fam := familyOf(a.IP)
	if fam == 0 || (fam == IPv6 && a.IP.IsLinkLocalUnicast()) {
		return Addr{}, false
	}
	ones, _ := a.Mask.Size()
	ip := a.IP
	if fam == IPv4 {
		ip = ip.To4()
	}
	return Addr{IP: append(net.IP(nil), ip...), PrefixLen: ones, Family: fam}, true
}

// routeFromNetlink converts r; routes the kernel derives from an address
// (proto kernel) and link-local IPv6 routes are left out because the guest
// kernel recreates them itself.
func routeFromNetlink(r netlink.Route, device string) (Route, bool) {
	if r.Protocol == unix.RTPROT_KERNEL {
		return Route{}, false
	}
	var fam Family
	switch r.Family {
	case unix.AF_INET:
		fam = IPv4
	case unix.AF_INET6:
		fam = IPv6
	default:
		return Route{}, false
	}
	dst := r.Dst
	if dst != nil {
		if ones, _ := dst.Mask.Size(); ones == 0 && dst.IP.IsUnspecified() {
			dst = nil // netlink reports default routes as 0.0.0.0/0 or ::/0
		} else if fam == IPv6 && (dst.IP.IsLinkLocalUnicast() || dst.IP.IsLinkLocalMulticast()) {
			return Route{}, false
		}
	}
	return Route{
		Family:  fam,
		Dst:     dst,
		Gateway: r.Gw,
		Src:     r.Src,
		Scope:   uint8(r.Scope),
		Metric:  r.Priority,
		Device:  device,
	}, true
}

// neighborFromNetlink keeps only permanent entries: dynamic ones are learnt
// again by the guest.
func neighborFromNetlink(n netlink.Neigh, device string) (Neighbor, bool) {
	if n.State&netlink.NUD_PERMANENT == 0 || n.IP == nil {
		return Neighbor{}, false
	}
	fam := familyOf(n.IP)
	if fam == 0 {
		return Neighbor{}, false
	}
	return Neighbor{Family: fam, IP: n.IP, MAC: n.HardwareAddr, Device: device}, true
}

// retryDump repeats a netlink dump the kernel interrupted because the table
// changed under it.
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	var (
		res []T
		err error
	)
	for range 5 {
		res, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return res, err
		}
	}
	return res, err
}

// nsHandle is a netlink handle bound to one network namespace, so no thread
// has to switch namespaces for netlink requests.
type nsHandle struct {
	*netlink.Handle
	ns   netns.NsHandle
	path string
}

func openHandle(netnsPath string) (*nsHandle, error) {
	ns, err := netns.GetFromPath(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", netnsPath, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("netlink handle in netns %s: %w", netnsPath, err)
	}
	return &nsHandle{Handle: h, ns: ns, path: netnsPath}, nil
}

func (h *nsHandle) close() {
	h.Delete()
	h.ns.Close()
}

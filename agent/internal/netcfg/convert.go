package netcfg

import (
	"fmt"
	"net"
	"strings"

	"github.com/containerd/containerd/errdefs"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/agent/api"
)

func invalid(field, format string, args ...any) error {
	return fmt.Errorf("%s: %s: %w", field, fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
}

// familyOf returns the netlink family (FAMILY_V4/V6) of ip.
func familyOf(ip net.IP) int {
	if ip.To4() != nil {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

func apiFamily(f int) api.IPFamily {
	switch f {
	case netlink.FAMILY_V4:
		return api.IPFamily_IP_FAMILY_V4
	case netlink.FAMILY_V6:
		return api.IPFamily_IP_FAMILY_V6
	}
	return api.IPFamily_IP_FAMILY_UNSPECIFIED
}

// checkFamily verifies that a requested family matches the one of an
// address (nl is a netlink family).
func checkFamily(field string, want api.IPFamily, nl int) error {
	if want != api.IPFamily_IP_FAMILY_UNSPECIFIED && want != apiFamily(nl) {
		return invalid(field, "family %s does not match the address family %s", want, apiFamily(nl))
	}
	return nil
}

// parseIP parses a textual IP address, IPv4 ones in their 4-byte form.
func parseIP(field, s string) (net.IP, error) {
	ip := net.ParseIP(strings.TrimSpace(s))
	if ip == nil {
		return nil, invalid(field, "%q is not an IP address", s)
	}
	if v4 := ip.To4(); v4 != nil {
		return v4, nil
	}
	return ip, nil
}

// parseMAC parses an Ethernet (6-byte) hardware address.
func parseMAC(field, s string) (net.HardwareAddr, error) {
	mac, err := net.ParseMAC(strings.TrimSpace(s))
	if err != nil || len(mac) != 6 {
		return nil, invalid(field, "%q is not a MAC address (aa:bb:cc:dd:ee:ff)", s)
	}
	return mac, nil
}

// validLinkName follows the kernel's dev_valid_name.
func validLinkName(field, name string) error {
	if name == "" || name == "." || name == ".." || len(name) >= unix.IFNAMSIZ ||
		strings.ContainsAny(name, "/: \t\n\r\v\f") {
		return invalid(field, "%q is not a valid interface name (1-15 characters, no '/', ':' or white space)", name)
	}
	return nil
}

// AddrFromAPI converts a requested address to netlink's form. field names
// the address in errors, e.g. "interface.ip_addresses[0]".
func AddrFromAPI(field string, a *api.IPAddress) (*netlink.Addr, error) {
	if a == nil {
		return nil, invalid(field, "missing")
	}
	ip, err := parseIP(field+".address", a.GetAddress())
	if err != nil {
		return nil, err
	}
	fam := familyOf(ip)
	if err := checkFamily(field+".family", a.GetFamily(), fam); err != nil {
		return nil, err
	}
	bits := 8 * len(ip)
	if p := a.GetPrefixLen(); p == 0 || p > uint32(bits) {
		return nil, invalid(field+".prefix_len", "%d is out of range 1-%d for %s", p, bits, apiFamily(fam))
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: net.CIDRMask(int(a.GetPrefixLen()), bits)}}
	if fam == netlink.FAMILY_V6 {
		// The address was the pod's already: skip duplicate address
		// detection, which would keep it tentative (unusable) for a while.
		addr.Flags = unix.IFA_F_NODAD
	}
	return addr, nil
}

// AddrToAPI describes an interface address.
func AddrToAPI(a netlink.Addr) *api.IPAddress {
	if a.IPNet == nil {
		return nil
	}
	ones, _ := a.Mask.Size()
	return &api.IPAddress{Family: apiFamily(familyOf(a.IP)), Address: a.IP.String(), PrefixLen: uint32(ones)}
}

// LinkToAPI describes a link and its addresses.
func LinkToAPI(l netlink.Link, addrs []netlink.Addr) *api.Interface {
	at := l.Attrs()
	out := &api.Interface{
		Name: at.Name, Mtu: uint32(at.MTU), LinkType: l.Type(), RawFlags: at.RawFlags,
	}
	if len(at.HardwareAddr) > 0 {
		out.HwAddr = at.HardwareAddr.String()
	}
	for _, a := range addrs {
		if pa := AddrToAPI(a); pa != nil {
			out.IpAddresses = append(out.IpAddresses, pa)
		}
	}
	return out
}

// The interface flags UpdateInterface can set through raw_flags, besides
// IFF_UP, which it always sets.
const settableFlags = unix.IFF_UP | unix.IFF_NOARP | unix.IFF_PROMISC | unix.IFF_ALLMULTI | unix.IFF_MULTICAST

// RouteFromAPI converts a requested route; linkIndex resolves its device
// (0, false when there is no such interface). field names the route in
// errors, e.g. "routes[2]".
func RouteFromAPI(field string, r *api.Route, linkIndex func(name string) (int, bool)) (*netlink.Route, error) {
	if r == nil {
		return nil, invalid(field, "missing")
	}
	out := &netlink.Route{Table: unix.RT_TABLE_MAIN, Protocol: unix.RTPROT_BOOT}
	fam := 0
	setFam := func(sub string, ip net.IP) error {
		f := familyOf(ip)
		if fam != 0 && fam != f {
			return invalid(field+"."+sub, "%s is not of the route's family %s", ip, apiFamily(fam))
		}
		fam = f
		return nil
	}
	switch r.GetFamily() {
	case api.IPFamily_IP_FAMILY_V4:
		fam = netlink.FAMILY_V4
	case api.IPFamily_IP_FAMILY_V6:
		fam = netlink.FAMILY_V6
	case api.IPFamily_IP_FAMILY_UNSPECIFIED:
	default:
		return nil, invalid(field+".family", "unknown family %d", r.GetFamily())
	}
	if d := strings.TrimSpace(r.GetDest()); d != "" && d != "default" {
		ip, n, err := net.ParseCIDR(d)
		if err != nil {
			return nil, invalid(field+".dest", "%q is not an address in CIDR form", r.GetDest())
		}
		if !ip.Equal(n.IP) {
			return nil, invalid(field+".dest", "%q has host bits set (network is %s)", r.GetDest(), n)
		}
		if err := setFam("dest", n.IP); err != nil {
			return nil, err
		}
		if v4 := n.IP.To4(); v4 != nil {
			n.IP = v4
		}
		out.Dst = n
	}
	if g := r.GetGateway(); g != "" {
		ip, err := parseIP(field+".gateway", g)
		if err != nil {
			return nil, err
		}
		if err := setFam("gateway", ip); err != nil {
			return nil, err
		}
		out.Gw = ip
	}
	if s := r.GetSource(); s != "" {
		ip, err := parseIP(field+".source", s)
		if err != nil {
			return nil, err
		}
		if err := setFam("source", ip); err != nil {
			return nil, err
		}
		out.Src = ip
	}
	if fam == 0 {
		fam = netlink.FAMILY_V4 // "default dev eth0" without a family
	}
	out.Family = fam
	if out.Dst == nil {
		// Default route: give the destination explicitly so the family
		// is unambiguous to the kernel.
		bits := 32
		ip := net.IPv4zero.To4()
		if fam == netlink.FAMILY_V6 {
			bits, ip = 128, net.IPv6zero
		}
		out.Dst = &net.IPNet{IP: ip, Mask: net.CIDRMask(0, bits)}
	}
	if r.GetScope() > 255 {
		return nil, invalid(field+".scope", "%d is out of range 0-255", r.GetScope())
	}
	out.Scope = netlink.Scope(r.GetScope())
	if out.Gw != nil && out.Scope >= netlink.SCOPE_LINK {
		return nil, invalid(field+".scope", "a route through gateway %s cannot have scope %d", out.Gw, r.GetScope())
	}
	out.Priority = int(r.GetMetric())
	out.Flags = int(r.GetFlags())
	dev := r.GetDevice()
	if dev == "" {
		return nil, invalid(field+".device", "required")
	}
	if dev == "lo" {
		return nil, invalid(field+".device", "routes of lo are not managed")
	}
	idx, ok := linkIndex(dev)
	if !ok {
		return nil, fmt.Errorf("%s.device: no interface %q in the guest: %w", field, dev, errdefs.ErrNotFound)
	}
	out.LinkIndex = idx
	return out, nil
}

// isDefault reports whether a route's destination is the whole address space.
func isDefault(dst *net.IPNet) bool {
	if dst == nil {
		return true
	}
	ones, _ := dst.Mask.Size()
	return ones == 0 && dst.IP.IsUnspecified()
}

// RouteToAPI describes a route; linkName resolves its interface index.
func RouteToAPI(r netlink.Route, linkName func(index int) string) *api.Route {
	out := &api.Route{
		Scope: uint32(r.Scope), Family: apiFamily(r.Family), Metric: uint32(r.Priority), Flags: uint32(r.Flags),
	}
	if !isDefault(r.Dst) {
		out.Dest = r.Dst.String()
	}
	gw, idx := r.Gw, r.LinkIndex
	if gw == nil && idx == 0 && len(r.MultiPath) > 0 {
		gw, idx = r.MultiPath[0].Gw, r.MultiPath[0].LinkIndex
	}
	if gw != nil {
		out.Gateway = gw.String()
	}
	if r.Src != nil {
		out.Source = r.Src.String()
	}
	if idx > 0 {
		out.Device = linkName(idx)
	}
	return out
}

// NeighFromAPI converts a requested neighbour entry (state NUD_PERMANENT
// unless given).
func NeighFromAPI(field string, n *api.Neighbor, linkIndex func(name string) (int, bool)) (*netlink.Neigh, error) {
	if n == nil {
		return nil, invalid(field, "missing")
	}
	ip, err := parseIP(field+".ip", n.GetIp())
	if err != nil {
		return nil, err
	}
	mac, err := parseMAC(field+".lladdr", n.GetLladdr())
	if err != nil {
		return nil, err
	}
	if n.GetState() > 0xffff {
		return nil, invalid(field+".state", "%#x is not a NUD_* state", n.GetState())
	}
	if n.GetFlags() > 0xff {
		return nil, invalid(field+".flags", "%#x is not a set of NTF_* flags", n.GetFlags())
	}
	if n.GetDevice() == "" {
		return nil, invalid(field+".device", "required")
	}
	idx, ok := linkIndex(n.GetDevice())
	if !ok {
		return nil, fmt.Errorf("%s.device: no interface %q in the guest: %w", field, n.GetDevice(), errdefs.ErrNotFound)
	}
	state := int(n.GetState())
	if state == 0 {
		state = netlink.NUD_PERMANENT
	}
	return &netlink.Neigh{
		LinkIndex: idx, Family: familyOf(ip), State: state, Flags: int(n.GetFlags()),
		IP: ip, HardwareAddr: mac,
	}, nil
}

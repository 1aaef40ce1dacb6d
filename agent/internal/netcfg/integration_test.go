package netcfg

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"slices"
	"testing"

	"github.com/containerd/containerd/errdefs"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/agent/api"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("integration test needs root, and CI=true")
	}
	t.Skip("needs root")
}

// testNetns creates a named network namespace with a veth pair whose
// guest-side end ("kasa0") has mac, and returns a handle on it.
func testNetns(t *testing.T, mac net.HardwareAddr) *netlink.Handle {
	t.Helper()
	requireRoot(t)
	name := fmt.Sprintf("kasacfg-test-%d", rand.Uint32())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "kasa0", HardwareAddr: mac}, PeerName: "peer0"}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	peer, err := h.LinkByName("peer0")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(peer); err != nil {
		t.Fatal(err)
	}
	return h
}

func addrStrings(as []*api.IPAddress) []string {
	var out []string
	for _, a := range as {
		out = append(out, fmt.Sprintf("%s/%d", a.GetAddress(), a.GetPrefixLen()))
	}
	return out
}

func findRoute(rs []*api.Route, dest, gw string) *api.Route {
	for _, r := range rs {
		if r.GetDest() == dest && r.GetGateway() == gw {
			return r
		}
	}
	return nil
}

func TestIntegrationNetcfg(t *testing.T) {
	mac, _ := net.ParseMAC("02:4b:41:53:41:01")
	h := testNetns(t, mac)
	c := New(h)

	// A stale address from before, which UpdateInterface must remove.
	link, err := h.LinkByName("kasa0")
	if err != nil {
		t.Fatal(err)
	}
	stale, _ := netlink.ParseAddr("192.168.99.1/24")
	if err := h.AddrAdd(link, stale); err != nil {
		t.Fatal(err)
	}

	got, err := c.UpdateInterface(&api.Interface{
		Name: "eth0", HwAddr: "02:4B:41:53:41:01", Mtu: 1400,
		IpAddresses: []*api.IPAddress{
			{Address: "10.250.0.7", PrefixLen: 24},
			{Family: api.IPFamily_IP_FAMILY_V6, Address: "fd00:250::7", PrefixLen: 64},
		},
	})
	if err != nil {
		t.Fatalf("UpdateInterface: %v", err)
	}
	addrs := addrStrings(got.GetIpAddresses())
	if got.GetName() != "eth0" || got.GetMtu() != 1400 || got.GetHwAddr() != mac.String() || got.GetRawFlags()&unix.IFF_UP == 0 ||
		!slices.Contains(addrs, "10.250.0.7/24") || !slices.Contains(addrs, "fd00:250::7/64") || slices.Contains(addrs, "192.168.99.1/24") {
		t.Fatalf("UpdateInterface = %v (addresses %v)", got, addrs)
	}
	if lo, err := h.LinkByName("lo"); err != nil || lo.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("lo is not up: %v", err)
	}
	if l, err := h.LinkByName("eth0"); err != nil || l.Attrs().MTU != 1400 || l.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("eth0 per netlink: %+v, %v", l, err)
	}

	// Again, with the IPv6 address dropped: it goes away, the rest stays.
	got, err = c.UpdateInterface(&api.Interface{Name: "eth0", HwAddr: mac.String(), IpAddresses: []*api.IPAddress{{Address: "10.250.0.7", PrefixLen: 24}}})
	if err != nil {
		t.Fatalf("second UpdateInterface: %v", err)
	}
	if addrs := addrStrings(got.GetIpAddresses()); slices.Contains(addrs, "fd00:250::7/64") || !slices.Contains(addrs, "10.250.0.7/24") || got.GetMtu() != 1400 {
		t.Errorf("second UpdateInterface = %v", got)
	}
	got, err = c.UpdateInterface(&api.Interface{HwAddr: mac.String(), RawFlags: unix.IFF_ALLMULTI, IpAddresses: []*api.IPAddress{
		{Address: "10.250.0.7", PrefixLen: 24}, {Address: "fd00:250::7", PrefixLen: 64},
	}})
	if err != nil || got.GetName() != "eth0" || got.GetRawFlags()&unix.IFF_ALLMULTI == 0 {
		t.Fatalf("third UpdateInterface = %v, %v", got, err)
	}

	ifaces, err := c.ListInterfaces()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, i := range ifaces {
		names = append(names, i.GetName())
		if i.GetName() == "peer0" && i.GetLinkType() != "veth" {
			t.Errorf("peer0 link type = %q", i.GetLinkType())
		}
	}
	if !slices.Contains(names, "lo") || !slices.Contains(names, "eth0") || !slices.Contains(names, "peer0") {
		t.Errorf("ListInterfaces names = %v", names)
	}

	if _, err := c.UpdateInterface(&api.Interface{HwAddr: "02:00:00:00:00:ee"}); !errdefs.IsNotFound(err) {
		t.Errorf("unknown MAC: %v, want NotFound", err)
	}

	// A stale route, which UpdateRoutes must remove.
	eth0, _ := h.LinkByName("eth0")
	_, staleDst, _ := net.ParseCIDR("172.16.0.0/16")
	if err := h.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: staleDst, Gw: net.ParseIP("10.250.0.254")}); err != nil {
		t.Fatal(err)
	}
	// Default route first and the link route it needs after it: the agent
	// orders them.
	routes, err := c.UpdateRoutes([]*api.Route{
		{Gateway: "10.250.0.1", Device: "eth0"},
		{Dest: "10.96.0.0/12", Gateway: "10.250.1.1", Device: "eth0", Metric: 7},
		{Dest: "10.250.1.0/24", Device: "eth0", Scope: uint32(netlink.SCOPE_LINK)},
		{Gateway: "fd00:250::1", Device: "eth0"},
	})
	if err != nil {
		t.Fatalf("UpdateRoutes: %v", err)
	}
	if r := findRoute(routes, "", "10.250.0.1"); r == nil || r.GetDevice() != "eth0" || r.GetFamily() != api.IPFamily_IP_FAMILY_V4 {
		t.Errorf("no IPv4 default route: %v", routes)
	}
	if r := findRoute(routes, "", "fd00:250::1"); r == nil || r.GetFamily() != api.IPFamily_IP_FAMILY_V6 {
		t.Errorf("no IPv6 default route: %v", routes)
	}
	if r := findRoute(routes, "10.96.0.0/12", "10.250.1.1"); r == nil || r.GetMetric() != 7 {
		t.Errorf("no service route: %v", routes)
	}
	if r := findRoute(routes, "10.250.1.0/24", ""); r == nil || r.GetScope() != uint32(netlink.SCOPE_LINK) {
		t.Errorf("no link route: %v", routes)
	}
	if findRoute(routes, "172.16.0.0/16", "10.250.0.254") != nil {
		t.Errorf("stale route kept: %v", routes)
	}
	if findRoute(routes, "10.250.0.0/24", "") == nil {
		t.Errorf("kernel prefix route of the address lost: %v", routes)
	}
	// Per netlink too.
	nlRoutes, err := h.RouteList(eth0, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var sawDefault bool
	for _, r := range nlRoutes {
		sawDefault = sawDefault || (isDefault(r.Dst) && r.Gw.Equal(net.ParseIP("10.250.0.1")))
	}
	if !sawDefault {
		t.Errorf("netlink has no default route via 10.250.0.1: %v", nlRoutes)
	}
	listed, err := c.ListRoutes()
	if err != nil || len(listed) != len(routes) {
		t.Errorf("ListRoutes = %v, %v; UpdateRoutes returned %v", listed, err, routes)
	}

	// Replacing with fewer routes drops the others.
	routes, err = c.UpdateRoutes([]*api.Route{{Gateway: "10.250.0.1", Device: "eth0"}})
	if err != nil || findRoute(routes, "10.96.0.0/12", "10.250.1.1") != nil || findRoute(routes, "", "fd00:250::1") != nil || findRoute(routes, "", "10.250.0.1") == nil {
		t.Errorf("second UpdateRoutes = %v, %v", routes, err)
	}

	// A gateway no link route reaches is the request's fault.
	if _, err := c.UpdateRoutes([]*api.Route{{Dest: "10.97.0.0/16", Gateway: "10.99.0.1", Device: "eth0"}}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("unreachable gateway: %v, want InvalidArgument", err)
	}
	if _, err := c.UpdateRoutes([]*api.Route{{Gateway: "10.250.0.1", Device: "eth9"}}); !errdefs.IsNotFound(err) {
		t.Errorf("unknown device: %v, want NotFound", err)
	}

	if err := c.AddNeighbors([]*api.Neighbor{
		{Ip: "10.250.0.1", Lladdr: "02:00:00:00:00:09", Device: "eth0"},
		{Ip: "fd00:250::1", Lladdr: "02:00:00:00:00:0a", Device: "eth0"},
	}); err != nil {
		t.Fatalf("AddNeighbors: %v", err)
	}
	// Again, with another MAC: replaced, not refused.
	if err := c.AddNeighbors([]*api.Neighbor{{Ip: "10.250.0.1", Lladdr: "02:00:00:00:00:0b", Device: "eth0"}}); err != nil {
		t.Fatalf("AddNeighbors replace: %v", err)
	}
	neighs, err := h.NeighList(eth0.Attrs().Index, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]string{}
	for _, n := range neighs {
		if n.State == netlink.NUD_PERMANENT {
			found[n.IP.String()] = n.HardwareAddr.String()
		}
	}
	if found["10.250.0.1"] != "02:00:00:00:00:0b" || found["fd00:250::1"] != "02:00:00:00:00:0a" {
		t.Errorf("permanent neighbours = %v", found)
	}
}

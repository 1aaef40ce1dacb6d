package netcfg

import (
	"net"
	"strings"
	"testing"

	"github.com/containerd/containerd/errdefs"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/agent/api"
)

var (
	v4 = api.IPFamily_IP_FAMILY_V4
	v6 = api.IPFamily_IP_FAMILY_V6
)

func devices(name string) (int, bool) {
	switch name {
	case "eth0":
		return 2, true
	case "lo":
		return 1, true
	}
	return 0, false
}

func TestAddrFromAPI(t *testing.T) {
	a, err := AddrFromAPI("a", &api.IPAddress{Address: "10.244.1.7", PrefixLen: 24})
	if err != nil || a.IPNet.String() != "10.244.1.7/24" || len(a.IP) != 4 || a.Flags != 0 {
		t.Fatalf("v4 = %+v, %v", a, err)
	}
	a, err = AddrFromAPI("a", &api.IPAddress{Family: v6, Address: "fd00::7", PrefixLen: 64})
	if err != nil || a.IPNet.String() != "fd00::7/64" || a.Flags&unix.IFA_F_NODAD == 0 {
		t.Fatalf("v6 = %+v, %v", a, err)
	}
	for _, tc := range []struct {
		in    *api.IPAddress
		field string
	}{
		{nil, "x"},
		{&api.IPAddress{Address: "10.0.0.300", PrefixLen: 24}, "x.address"},
		{&api.IPAddress{Address: "", PrefixLen: 24}, "x.address"},
		{&api.IPAddress{Address: "10.0.0.1", PrefixLen: 33}, "x.prefix_len"},
		{&api.IPAddress{Address: "10.0.0.1"}, "x.prefix_len"},
		{&api.IPAddress{Address: "fd00::1", PrefixLen: 129}, "x.prefix_len"},
		{&api.IPAddress{Family: v4, Address: "fd00::1", PrefixLen: 64}, "x.family"},
	} {
		_, err := AddrFromAPI("x", tc.in)
		if !errdefs.IsInvalidArgument(err) || !strings.HasPrefix(err.Error(), tc.field+":") {
			t.Errorf("%v: error %v, want InvalidArgument on %s", tc.in, err, tc.field)
		}
	}
}

func TestAddrAndLinkToAPI(t *testing.T) {
	ip, n, _ := net.ParseCIDR("fd00::7/64")
	n.IP = ip
	mac, _ := net.ParseMAC("02:00:00:00:00:01")
	l := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 1450, HardwareAddr: mac, RawFlags: unix.IFF_UP}}
	got := LinkToAPI(l, []netlink.Addr{{IPNet: n}, {}})
	if got.GetName() != "eth0" || got.GetMtu() != 1450 || got.GetHwAddr() != "02:00:00:00:00:01" ||
		got.GetLinkType() != "device" || got.GetRawFlags() != unix.IFF_UP || len(got.GetIpAddresses()) != 1 {
		t.Fatalf("LinkToAPI = %v", got)
	}
	if a := got.GetIpAddresses()[0]; a.GetAddress() != "fd00::7" || a.GetPrefixLen() != 64 || a.GetFamily() != v6 {
		t.Errorf("address = %v", a)
	}
}

func TestRouteFromAPI(t *testing.T) {
	for _, tc := range []struct {
		in      *api.Route
		dst, gw string
		fam     int
	}{
		{&api.Route{Dest: "10.244.1.0/24", Device: "eth0", Scope: 253}, "10.244.1.0/24", "<nil>", unix.AF_INET},
		{&api.Route{Gateway: "10.244.1.1", Device: "eth0"}, "0.0.0.0/0", "10.244.1.1", unix.AF_INET},
		{&api.Route{Dest: "default", Gateway: "fd00::1", Device: "eth0"}, "::/0", "fd00::1", unix.AF_INET6},
		{&api.Route{Family: v6, Device: "eth0"}, "::/0", "<nil>", unix.AF_INET6},
		{&api.Route{Device: "eth0"}, "0.0.0.0/0", "<nil>", unix.AF_INET},
	} {
		r, err := RouteFromAPI("r", tc.in, devices)
		if err != nil {
			t.Errorf("%v: %v", tc.in, err)
			continue
		}
		if r.Dst.String() != tc.dst || r.Gw.String() != tc.gw || r.Family != tc.fam || r.LinkIndex != 2 ||
			r.Table != unix.RT_TABLE_MAIN || int(r.Scope) != int(tc.in.GetScope()) {
			t.Errorf("%v: got %+v", tc.in, r)
		}
	}
	r, err := RouteFromAPI("r", &api.Route{Dest: "10.96.0.0/12", Gateway: "10.244.1.1", Source: "10.244.1.7", Device: "eth0", Metric: 100, Flags: unix.RTNH_F_ONLINK}, devices)
	if err != nil || r.Priority != 100 || r.Flags != unix.RTNH_F_ONLINK || r.Src.String() != "10.244.1.7" {
		t.Errorf("full route = %+v, %v", r, err)
	}

	for _, tc := range []struct {
		in       *api.Route
		field    string
		notFound bool
	}{
		{nil, "r", false},
		{&api.Route{Dest: "10.0.0.0", Device: "eth0"}, "r.dest", false},
		{&api.Route{Dest: "10.0.0.1/24", Device: "eth0"}, "r.dest", false},
		{&api.Route{Gateway: "nope", Device: "eth0"}, "r.gateway", false},
		{&api.Route{Dest: "10.0.0.0/8", Gateway: "fd00::1", Device: "eth0"}, "r.gateway", false},
		{&api.Route{Family: v6, Gateway: "10.0.0.1", Device: "eth0"}, "r.gateway", false},
		{&api.Route{Gateway: "10.0.0.1", Source: "x", Device: "eth0"}, "r.source", false},
		{&api.Route{Gateway: "10.0.0.1", Device: "eth0", Scope: 256}, "r.scope", false},
		{&api.Route{Gateway: "10.0.0.1", Device: "eth0", Scope: 253}, "r.scope", false},
		{&api.Route{Family: 7, Device: "eth0"}, "r.family", false},
		{&api.Route{Gateway: "10.0.0.1"}, "r.device", false},
		{&api.Route{Gateway: "10.0.0.1", Device: "lo"}, "r.device", false},
		{&api.Route{Gateway: "10.0.0.1", Device: "eth9"}, "r.device", true},
	} {
		_, err := RouteFromAPI("r", tc.in, devices)
		ok := errdefs.IsInvalidArgument(err)
		if tc.notFound {
			ok = errdefs.IsNotFound(err)
		}
		if !ok || !strings.HasPrefix(err.Error(), tc.field+":") {
			t.Errorf("%v: error %v, want one on %s (not found: %v)", tc.in, err, tc.field, tc.notFound)
		}
	}
}

func TestRouteToAPI(t *testing.T) {
	_, dst, _ := net.ParseCIDR("10.96.0.0/12")
	_, zero, _ := net.ParseCIDR("0.0.0.0/0")
	name := func(i int) string { return map[int]string{2: "eth0"}[i] }
	got := RouteToAPI(netlink.Route{Family: unix.AF_INET, Dst: dst, Gw: net.ParseIP("10.244.1.1"), LinkIndex: 2, Priority: 5, Src: net.ParseIP("10.244.1.7")}, name)
	if got.GetDest() != "10.96.0.0/12" || got.GetGateway() != "10.244.1.1" || got.GetDevice() != "eth0" ||
		got.GetMetric() != 5 || got.GetSource() != "10.244.1.7" || got.GetFamily() != v4 {
		t.Errorf("route = %v", got)
	}
	for _, d := range []*net.IPNet{nil, zero} {
		if got := RouteToAPI(netlink.Route{Family: unix.AF_INET, Dst: d, Gw: net.ParseIP("10.244.1.1"), LinkIndex: 2}, name); got.GetDest() != "" {
			t.Errorf("default route with Dst %v: dest = %q", d, got.GetDest())
		}
	}
	mp := RouteToAPI(netlink.Route{Family: unix.AF_INET6, MultiPath: []*netlink.NexthopInfo{{LinkIndex: 2, Gw: net.ParseIP("fd00::1")}}}, name)
	if mp.GetGateway() != "fd00::1" || mp.GetDevice() != "eth0" || mp.GetFamily() != v6 {
		t.Errorf("multipath route = %v", mp)
	}
}

func TestRouteOrder(t *testing.T) {
	var rs []*netlink.Route
	for _, s := range []struct{ dst, gw string }{
		{"0.0.0.0/0", "10.0.0.1"}, {"10.96.0.0/12", "10.0.0.1"}, {"10.0.0.0/24", ""}, {"::/0", "fd00::1"}, {"fd00::/64", ""},
	} {
		_, d, _ := net.ParseCIDR(s.dst)
		r := &netlink.Route{Dst: d}
		if s.gw != "" {
			r.Gw = net.ParseIP(s.gw)
		}
		rs = append(rs, r)
	}
	got := routeOrder(rs)
	want := []int{2, 4, 1, 0, 3}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("order = %v, want %v", got, want)
		}
	}
}

func TestNeighFromAPI(t *testing.T) {
	n, err := NeighFromAPI("n", &api.Neighbor{Ip: "10.244.1.1", Lladdr: "02:00:00:00:00:09", Device: "eth0"}, devices)
	if err != nil || n.State != netlink.NUD_PERMANENT || n.Family != unix.AF_INET || n.LinkIndex != 2 ||
		n.HardwareAddr.String() != "02:00:00:00:00:09" || n.IP.String() != "10.244.1.1" {
		t.Fatalf("neigh = %+v, %v", n, err)
	}
	n, err = NeighFromAPI("n", &api.Neighbor{Ip: "fd00::1", Lladdr: "02:00:00:00:00:09", Device: "eth0", State: netlink.NUD_REACHABLE, Flags: netlink.NTF_ROUTER}, devices)
	if err != nil || n.State != netlink.NUD_REACHABLE || n.Flags != netlink.NTF_ROUTER || n.Family != unix.AF_INET6 {
		t.Fatalf("v6 neigh = %+v, %v", n, err)
	}
	for _, tc := range []struct {
		in    *api.Neighbor
		field string
	}{
		{nil, "n"},
		{&api.Neighbor{Ip: "x", Lladdr: "02:00:00:00:00:09", Device: "eth0"}, "n.ip"},
		{&api.Neighbor{Ip: "10.0.0.1", Lladdr: "02:00:00:00:00", Device: "eth0"}, "n.lladdr"},
		{&api.Neighbor{Ip: "10.0.0.1", Lladdr: "02:00:00:00:00:09"}, "n.device"},
		{&api.Neighbor{Ip: "10.0.0.1", Lladdr: "02:00:00:00:00:09", Device: "eth0", State: 1 << 20}, "n.state"},
	} {
		if _, err := NeighFromAPI("n", tc.in, devices); !errdefs.IsInvalidArgument(err) || !strings.HasPrefix(err.Error(), tc.field+":") {
			t.Errorf("%v: error %v, want InvalidArgument on %s", tc.in, err, tc.field)
		}
	}
	if _, err := NeighFromAPI("n", &api.Neighbor{Ip: "10.0.0.1", Lladdr: "02:00:00:00:00:09", Device: "eth7"}, devices); !errdefs.IsNotFound(err) {
		t.Errorf("unknown device: %v, want NotFound", err)
	}
}

func TestUpdateInterfaceValidation(t *testing.T) {
	// Validation happens before any netlink call, so this needs no root.
	c := New(nil)
	for _, tc := range []struct {
		in    *api.Interface
		field string
	}{
		{nil, "interface"},
		{&api.Interface{Name: "eth0"}, "interface.hw_addr"},
		{&api.Interface{HwAddr: "zz"}, "interface.hw_addr"},
		{&api.Interface{HwAddr: "02:00:00:00:00:01", Name: "a/b"}, "interface.name"},
		{&api.Interface{HwAddr: "02:00:00:00:00:01", Name: "much-too-long-name"}, "interface.name"},
		{&api.Interface{HwAddr: "02:00:00:00:00:01", Mtu: 20}, "interface.mtu"},
		{&api.Interface{HwAddr: "02:00:00:00:00:01", RawFlags: unix.IFF_LOOPBACK}, "interface.raw_flags"},
		{&api.Interface{HwAddr: "02:00:00:00:00:01", IpAddresses: []*api.IPAddress{{Address: "10.0.0.1", PrefixLen: 24}, {Address: "10.0.0.2", PrefixLen: 99}}}, "interface.ip_addresses[1].prefix_len"},
	} {
		if _, err := c.UpdateInterface(tc.in); !errdefs.IsInvalidArgument(err) || !strings.HasPrefix(err.Error(), tc.field+":") {
			t.Errorf("%v: error %v, want InvalidArgument on %s", tc.in, err, tc.field)
		}
	}
}

package network

import (
	"errors"
	"net"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func cidr(t *testing.T, s string) *net.IPNet {
	t.Helper()
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	n.IP = ip
	return n
}

func TestAddrFromNetlink(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string
		fam  Family
		keep bool
	}{
		{"10.0.0.2/24", "10.0.0.2/24", IPv4, true},
		{"2001:db8::5/64", "2001:db8::5/64", IPv6, true},
		{"fe80::1/64", "", 0, false},
	} {
		got, ok := addrFromNetlink(netlink.Addr{IPNet: cidr(t, tc.in)})
		if ok != tc.keep {
			t.Errorf("%s: kept = %v, want %v", tc.in, ok, tc.keep)
			continue
		}
		if ok && (got.String() != tc.want || got.Family != tc.fam) {
			t.Errorf("%s: got %s (%v), want %s (%v)", tc.in, got, got.Family, tc.want, tc.fam)
		}
	}
	if _, ok := addrFromNetlink(netlink.Addr{}); ok {
		t.Error("address without IPNet was kept")
	}
}

func TestRouteFromNetlink(t *testing.T) {
	gw := net.ParseIP("10.0.0.1")
	for _, tc := range []struct {
		name        string
		in          netlink.Route
		keep, isDef bool
	}{
		{"default nil dst", netlink.Route{Family: unix.AF_INET, Gw: gw, Protocol: unix.RTPROT_BOOT}, true, true},
		{"default zero dst", netlink.Route{Family: unix.AF_INET, Dst: cidr(t, "0.0.0.0/0"), Gw: gw}, true, true},
		{"v6 default", netlink.Route{Family: unix.AF_INET6, Dst: cidr(t, "::/0"), Gw: net.ParseIP("fe80::1")}, true, true},
		{"static", netlink.Route{Family: unix.AF_INET, Dst: cidr(t, "192.168.0.0/16"), Gw: gw, Priority: 7}, true, false},
		{"kernel", netlink.Route{Family: unix.AF_INET, Dst: cidr(t, "10.0.0.0/24"), Protocol: unix.RTPROT_KERNEL}, false, false},
		{"v6 link-local", netlink.Route{Family: unix.AF_INET6, Dst: cidr(t, "fe80::/64"), Protocol: unix.RTPROT_BOOT}, false, false},
		{"v6 multicast link-local", netlink.Route{Family: unix.AF_INET6, Dst: cidr(t, "ff02::/16")}, false, false},
		{"mpls", netlink.Route{Family: unix.AF_MPLS}, false, false},
	} {
		got, ok := routeFromNetlink(tc.in, "eth0")
		if ok != tc.keep {
			t.Errorf("%s: kept = %v, want %v", tc.name, ok, tc.keep)
			continue
		}
		if !ok {
			continue
		}
		if got.IsDefault() != tc.isDef || got.Device != "eth0" || !got.Gateway.Equal(tc.in.Gw) || got.Metric != tc.in.Priority {
			t.Errorf("%s: got %+v", tc.name, got)
		}
	}
}

func TestNeighborFromNetlink(t *testing.T) {
	mac, _ := net.ParseMAC("02:00:00:00:00:01")
	perm := netlink.Neigh{IP: net.ParseIP("10.0.0.9"), HardwareAddr: mac, State: netlink.NUD_PERMANENT}
	if n, ok := neighborFromNetlink(perm, "eth0"); !ok || n.Family != IPv4 || n.MAC.String() != mac.String() {
		t.Errorf("permanent neighbour: got %+v, %v", n, ok)
	}
	reach := perm
	reach.State = netlink.NUD_REACHABLE
	if _, ok := neighborFromNetlink(reach, "eth0"); ok {
		t.Error("reachable neighbour was kept")
	}
}

func TestRollbackRunsNewestFirstAndJoinsErrors(t *testing.T) {
	var order []int
	errA, errB := errors.New("a"), errors.New("b")
	var rb rollback
	rb.add(func() error { order = append(order, 1); return errA })
	rb.add(func() error { order = append(order, 2); return nil })
	rb.add(func() error { order = append(order, 3); return errB })
	err := rb.run()
	if len(order) != 3 || order[0] != 3 || order[2] != 1 {
		t.Errorf("order = %v, want [3 2 1]", order)
	}
	if !errors.Is(err, errA) || !errors.Is(err, errB) {
		t.Errorf("err = %v, want both errors", err)
	}
	if err := rb.run(); err != nil || len(order) != 3 {
		t.Errorf("second run did work: %v %v", err, order)
	}
	rb.add(func() error { t.Error("released step ran"); return nil })
	rb.release()
	if err := rb.run(); err != nil {
		t.Error(err)
	}
}

func TestTapName(t *testing.T) {
	if got := TapName(3); got != "tap3_kasa" {
		t.Errorf("TapName(3) = %q", got)
	}
}

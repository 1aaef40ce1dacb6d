package virtcontainers

import (
	"net"
	"testing"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/virtcontainers/network"
)

func TestGuestNetworkDescription(t *testing.T) {
	mac, _ := net.ParseMAC("0a:58:0a:f4:00:05")
	_, dst, _ := net.ParseCIDR("10.244.0.0/16")
	ep := network.Endpoint{
		Name: "eth0", MAC: mac, MTU: 1450,
		Addrs:  []network.Addr{{IP: net.ParseIP("10.244.0.5"), PrefixLen: 24, Family: network.IPv4}, {IP: net.ParseIP("fd00::5"), PrefixLen: 64, Family: network.IPv6}},
		Routes: []network.Route{{Family: network.IPv4, Gateway: net.ParseIP("10.244.0.1"), Device: "eth0"}, {Family: network.IPv4, Dst: dst, Gateway: net.ParseIP("10.244.0.1"), Device: "eth0", Metric: 10}},
	}
	iface := guestInterface(ep)
	if iface.GetHwAddr() != "0a:58:0a:f4:00:05" || iface.GetMtu() != 1450 || iface.GetName() != "eth0" || len(iface.GetIpAddresses()) != 2 {
		t.Fatalf("interface = %v", iface)
	}
	if a := iface.GetIpAddresses()[1]; a.GetFamily() != api.IPFamily_IP_FAMILY_V6 || a.GetAddress() != "fd00::5" || a.GetPrefixLen() != 64 {
		t.Fatalf("v6 address = %v", a)
	}
	def, sub := guestRoute(ep.Routes[0]), guestRoute(ep.Routes[1])
	if def.GetDest() != "" || def.GetGateway() != "10.244.0.1" || def.GetDevice() != "eth0" {
		t.Fatalf("default route = %v", def)
	}
	if sub.GetDest() != "10.244.0.0/16" || sub.GetMetric() != 10 {
		t.Fatalf("subnet route = %v", sub)
	}
}

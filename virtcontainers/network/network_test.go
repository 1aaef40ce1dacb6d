package network

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// requireRoot skips tests that need root, unless CI=true where a missing
// prerequisite must fail loudly.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test needs root (network namespaces, veth, tc)")
	}
	t.Skip("this test needs root (network namespaces, veth, tc)")
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// testNetns creates a named netns kasanet-test-<random> deleted at the end
// of the test, and returns its name and path.
func testNetns(t *testing.T) (string, string) {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	name := "kasanet-test-" + hex.EncodeToString(b)
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v\n%s", name, err, out)
		}
	})
	return name, "/var/run/netns/" + name
}

type podNet struct {
	ns, path  string // the pod netns, with veth eth0 = 10.250.X.2/24
	peerNS    string // the other end, peer0 = 10.250.X.1/24
	x         int
	gw, podIP net.IP
}

// newPodNet builds what CNI would: a veth whose pod end has an address and
// a default route, and whose peer lives in another test netns.
func newPodNet(t *testing.T) podNet {
	t.Helper()
	requireRoot(t)
	ns, path := testNetns(t)
	peerNS, _ := testNetns(t)
	b := make([]byte, 1)
	rand.Read(b)
	x := int(b[0])
	p := podNet{ns: ns, path: path, peerNS: peerNS, x: x,
		gw: net.ParseIP(fmt.Sprintf("10.250.%d.1", x)).To4(), podIP: net.ParseIP(fmt.Sprintf("10.250.%d.2", x)).To4()}
	run(t, "ip", "-n", ns, "link", "add", "eth0", "mtu", "1400", "type", "veth", "peer", "name", "peer0", "netns", peerNS)
	run(t, "ip", "-n", ns, "addr", "add", p.podIP.String()+"/24", "dev", "eth0")
	run(t, "ip", "-n", ns, "link", "set", "eth0", "up")
	run(t, "ip", "-n", ns, "route", "add", "default", "via", p.gw.String(), "dev", "eth0")
	run(t, "ip", "-n", peerNS, "addr", "add", p.gw.String()+"/24", "dev", "peer0")
	run(t, "ip", "-n", peerNS, "link", "set", "peer0", "mtu", "1400", "up")
	return p
}

func scanOne(t *testing.T, p podNet) Endpoint {
	t.Helper()
	eps, err := Scan(p.path)
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != 1 {
		t.Fatalf("Scan(%s) = %d endpoints, want 1: %+v", p.path, len(eps), eps)
	}
	return eps[0]
}

func TestIntegrationScan(t *testing.T) {
	p := newPodNet(t)
	run(t, "ip", "-n", p.ns, "neigh", "add", fmt.Sprintf("10.250.%d.9", p.x), "lladdr", "02:00:00:00:00:09", "dev", "eth0", "nud", "permanent")
	ep := scanOne(t, p)
	if ep.Name != "eth0" || ep.MTU != 1400 || len(ep.MAC) != 6 || ep.Index == 0 {
		t.Errorf("endpoint = %+v", ep)
	}
	var v4 []Addr
	for _, a := range ep.Addrs {
		if a.Family == IPv4 {
			v4 = append(v4, a)
		}
		if a.IP.IsLinkLocalUnicast() {
			t.Errorf("link-local address %s reported", a)
		}
	}
	if len(v4) != 1 || v4[0].String() != p.podIP.String()+"/24" {
		t.Errorf("IPv4 addresses = %v, want %s/24", v4, p.podIP)
	}
	if len(ep.Routes) != 1 {
		t.Fatalf("routes = %+v, want only the default route", ep.Routes)
	}
	if r := ep.Routes[0]; !r.IsDefault() || !r.Gateway.Equal(p.gw) || r.Device != "eth0" || r.Family != IPv4 {
		t.Errorf("route = %+v, want default via %s dev eth0", r, p.gw)
	}
	if len(ep.Neighbors) != 1 || ep.Neighbors[0].MAC.String() != "02:00:00:00:00:09" {
		t.Errorf("neighbours = %+v, want the permanent one", ep.Neighbors)
	}
}

func TestIntegrationScanMissingNetns(t *testing.T) {
	requireRoot(t)
	path := "/var/run/netns/kasanet-test-missing-" + fmt.Sprint(time.Now().UnixNano())
	_, err := Scan(path)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("Scan(%s) error = %v, want one naming the path", path, err)
	}
}

// checkRedirect reports whether link has an ingress qdisc and one of our
// mirred filters to toIndex.
func checkRedirect(t *testing.T, h *nsHandle, link netlink.Link, toIndex int) (qdisc, filter bool) {
	t.Helper()
	qs, err := h.QdiscList(link)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qs {
		qdisc = qdisc || q.Type() == "ingress"
	}
	fs, err := h.FilterList(link, ingressParent)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fs {
		u, ok := f.(*netlink.U32)
		if !ok {
			continue
		}
		for _, a := range u.Actions {
			if m, ok := a.(*netlink.MirredAction); ok && m.Ifindex == toIndex && m.MirredAction == netlink.TCA_EGRESS_REDIR {
				filter = true
			}
		}
	}
	return qdisc, filter
}

func TestIntegrationAttachDetach(t *testing.T) {
	p := newPodNet(t)
	ep := scanOne(t, p)
	tap, err := AttachTap(p.path, ep, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer tap.Detach()
	if tap.Name != "tap0_kasa" || tap.File == nil {
		t.Fatalf("tap = %+v", tap)
	}
	h, err := openHandle(p.path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.close()
	tl, err := h.LinkByName("tap0_kasa")
	if err != nil {
		t.Fatal(err)
	}
	if tl.Attrs().MTU != 1400 || tl.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("tap attrs: mtu %d flags %v, want 1400 and up", tl.Attrs().MTU, tl.Attrs().Flags)
	}
	veth, err := h.LinkByIndex(ep.Index)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		from netlink.Link
		to   int
	}{{veth, tl.Attrs().Index}, {tl, veth.Attrs().Index}} {
		if q, f := checkRedirect(t, h, c.from, c.to); !q || !f {
			t.Errorf("%s: ingress qdisc %v, redirect filter %v; want both", c.from.Attrs().Name, q, f)
		}
	}
	out := run(t, "ip", "netns", "exec", p.ns, "tc", "filter", "show", "dev", "eth0", "ingress")
	if !strings.Contains(out, "mirred") || !strings.Contains(out, "tap0_kasa") {
		t.Errorf("tc filter show dev eth0 ingress:\n%s", out)
	}

	t.Run("packet", func(t *testing.T) { arpThroughTap(t, tap, ep, p) })

	if err := tap.Detach(); err != nil {
		t.Fatal(err)
	}
	if err := tap.Detach(); err != nil {
		t.Fatalf("second Detach: %v", err)
	}
	if _, err := h.LinkByName("tap0_kasa"); !isLinkNotFound(err) {
		t.Errorf("tap still there after Detach: %v", err)
	}
	if q, f := checkRedirect(t, h, veth, tl.Attrs().Index); q || f {
		t.Errorf("veth after Detach: ingress qdisc %v, redirect filter %v; want neither", q, f)
	}
}

// arpThroughTap writes an ARP request for the gateway into the tap, as the
// guest would, and expects the peer's reply back from the tap: this only
// works if both redirects work.
func arpThroughTap(t *testing.T, tap *Tap, ep Endpoint, p podNet) {
	frame := make([]byte, 0, 10+42)
	frame = append(frame, make([]byte, 10)...) // virtio_net_hdr (IFF_VNET_HDR)
	frame = append(frame, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	frame = append(frame, ep.MAC...)
	frame = append(frame, 0x08, 0x06)             // ARP
	frame = append(frame, 0, 1, 8, 0, 6, 4, 0, 1) // Ethernet/IPv4, request
	frame = append(frame, ep.MAC...)              // sender MAC
	frame = append(frame, p.podIP...)             // sender IP
	frame = append(frame, 0, 0, 0, 0, 0, 0)       // target MAC
	frame = append(frame, p.gw...)                // target IP
	fd := int(tap.File.Fd())
	deadline := time.Now().Add(5 * time.Second)
	buf := make([]byte, 65536)
	var sent time.Time
	for time.Now().Before(deadline) {
		if time.Since(sent) > time.Second {
			if _, err := unix.Write(fd, frame); err != nil {
				t.Fatalf("write ARP request to tap: %v", err)
			}
			sent = time.Now()
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if n, err := unix.Poll(pfd, 200); err != nil || n <= 0 {
			continue
		}
		n, err := unix.Read(fd, buf)
		if err != nil {
			t.Fatalf("read tap: %v", err)
		}
		eth := buf[10:n]
		if len(eth) >= 42 && eth[12] == 0x08 && eth[13] == 0x06 && eth[21] == 2 &&
			bytes.Equal(eth[28:32], p.gw) && bytes.Equal(eth[0:6], ep.MAC) {
			return
		}
	}
	t.Fatal("no ARP reply from the peer came back through the tap")
}

func TestIntegrationAttachClashingTapRollsBack(t *testing.T) {
	p := newPodNet(t)
	ep := scanOne(t, p)
	run(t, "ip", "-n", p.ns, "tuntap", "add", "dev", "tap1_kasa", "mode", "tap")
	if _, err := AttachTap(p.path, ep, 1); err == nil || !strings.Contains(err.Error(), "tap1_kasa") {
		t.Fatalf("AttachTap with a clashing name: error = %v, want one naming tap1_kasa", err)
	}
	h, err := openHandle(p.path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.close()
	if _, err := h.LinkByName("tap1_kasa"); err != nil {
		t.Errorf("the pre-existing tap was removed: %v", err)
	}
	veth, _ := h.LinkByIndex(ep.Index)
	if q, f := checkRedirect(t, h, veth, 0); q || f {
		t.Errorf("veth after failed AttachTap: ingress qdisc %v, filter %v", q, f)
	}
}

func TestIntegrationAttachFailingLateRollsBack(t *testing.T) {
	p := newPodNet(t)
	ep := scanOne(t, p)
	// A foreign ingress qdisc on the veth makes AttachTap fail after it has
	// already created the tap.
	run(t, "ip", "netns", "exec", p.ns, "tc", "qdisc", "add", "dev", "eth0", "ingress")
	if _, err := AttachTap(p.path, ep, 2); err == nil {
		t.Fatal("AttachTap succeeded over an existing ingress qdisc")
	}
	h, err := openHandle(p.path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.close()
	if _, err := h.LinkByName("tap2_kasa"); !isLinkNotFound(err) {
		t.Errorf("tap2_kasa left behind after a failed AttachTap: %v", err)
	}
	out := run(t, "ip", "netns", "exec", p.ns, "tc", "qdisc", "show", "dev", "eth0", "ingress")
	if !strings.Contains(out, "ingress") {
		t.Errorf("the foreign ingress qdisc was removed:\n%s", out)
	}
}

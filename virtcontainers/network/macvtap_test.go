package network

import (
	"bytes"
	"net"
	"testing"
)

func TestIntegrationMacvtapAttachDetach(t *testing.T) {
	p := newPodNet(t)
	ep := scanOne(t, p)
	mvt, err := AttachMacvtap(p.path, ep, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer mvt.Detach()
	if mvt.Kind != KindMacvtap || mvt.File == nil || !bytes.Equal(mvt.VethMAC, ep.MAC) {
		t.Fatalf("macvtap = %+v", mvt)
	}
	h, err := openHandle(p.path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.close()
	link, err := h.LinkByName("tap0_kasa")
	if err != nil {
		t.Fatal(err)
	}
	if link.Type() != "macvtap" || !bytes.Equal(link.Attrs().HardwareAddr, ep.MAC) || link.Attrs().MTU != 1400 || link.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("macvtap: type %s mac %s mtu %d flags %v; want macvtap with the veth's MAC %s, mtu 1400, up",
			link.Type(), link.Attrs().HardwareAddr, link.Attrs().MTU, link.Attrs().Flags, ep.MAC)
	}
	veth, err := h.LinkByIndex(ep.Index)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(veth.Attrs().HardwareAddr, ep.MAC) {
		t.Error("the veth kept its MAC: the guest's would clash with it")
	}

	// The guest's frames (sent with the veth's old MAC) reach the peer and
	// the answers come back through the macvtap.
	t.Run("packet", func(t *testing.T) { arpThroughTap(t, mvt, ep, p) })

	if err := mvt.Detach(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.LinkByName("tap0_kasa"); !isLinkNotFound(err) {
		t.Errorf("macvtap still there after Detach: %v", err)
	}
	veth, _ = h.LinkByIndex(ep.Index)
	if !bytes.Equal(veth.Attrs().HardwareAddr, ep.MAC) {
		t.Errorf("veth MAC %s after Detach, want %s back", veth.Attrs().HardwareAddr, ep.MAC)
	}
}

// A shim that died leaves the macvtap; what it persisted removes it.
func TestIntegrationMacvtapExistingDetach(t *testing.T) {
	p := newPodNet(t)
	ep := scanOne(t, p)
	mvt, err := AttachMacvtap(p.path, ep, 3)
	if err != nil {
		t.Fatal(err)
	}
	mvt.File.Close()
	if err := ExistingTap(p.path, mvt.Name, KindMacvtap, mvt.IfIndex(), mvt.VethIndex(), mvt.VethMAC).Detach(); err != nil {
		t.Fatal(err)
	}
	h, err := openHandle(p.path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.close()
	if _, err := h.LinkByName("tap3_kasa"); !isLinkNotFound(err) {
		t.Errorf("macvtap left: %v", err)
	}
	if veth, _ := h.LinkByIndex(ep.Index); !bytes.Equal(veth.Attrs().HardwareAddr, ep.MAC) {
		t.Errorf("veth MAC not restored: %s", veth.Attrs().HardwareAddr)
	}
}

// Two pods' macvtaps get different /dev/tap<ifindex> nodes.
func TestIntegrationMacvtapTwoPods(t *testing.T) {
	a, b := newPodNet(t), newPodNet(t)
	ma, err := AttachMacvtap(a.path, scanOne(t, a), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ma.Detach()
	mb, err := AttachMacvtap(b.path, scanOne(t, b), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer mb.Detach()
	if ma.IfIndex() == mb.IfIndex() {
		t.Errorf("both macvtaps have ifindex %d", ma.IfIndex())
	}
}

//go:build integration

package integration

import (
	"crypto/rand"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kasa-runtime/kasa/test/ctrtest"
)

// podNetns makes what CNI would: a pod netns whose eth0 (a veth) has
// 10.251.N.2/24 and a default route via .1, the veth's peer in a second
// netns standing for the node. It returns the pod netns path and a function
// that runs a command in the peer netns.
func podNetns(t *testing.T) (string, string, func(args ...string) (string, error)) {
	t.Helper()
	var b [2]byte
	rand.Read(b[:])
	pod, peer := fmt.Sprintf("kasapod-%x", b), fmt.Sprintf("kasapeer-%x", b)
	subnet := fmt.Sprintf("10.251.%d", int(b[0])%250+1)
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	run("ip", "netns", "add", pod)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", pod).Run() })
	run("ip", "netns", "add", peer)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", peer).Run() })
	run("ip", "-n", pod, "link", "add", "eth0", "mtu", "1400", "type", "veth", "peer", "name", "node0", "netns", peer)
	run("ip", "-n", pod, "addr", "add", subnet+".2/24", "dev", "eth0")
	run("ip", "-n", pod, "link", "set", "eth0", "up")
	run("ip", "-n", pod, "link", "set", "lo", "up")
	run("ip", "-n", pod, "route", "add", "default", "via", subnet+".1")
	run("ip", "-n", peer, "addr", "add", subnet+".1/24", "dev", "node0")
	run("ip", "-n", peer, "link", "set", "node0", "mtu", "1400", "up")
	inPeer := func(args ...string) (string, error) {
		out, err := exec.Command("ip", append([]string{"netns", "exec", peer}, args...)...).CombinedOutput()
		return string(out), err
	}
	return "/var/run/netns/" + pod, subnet + ".2", inPeer
}

// The pod's veth reaches the guest: the guest NIC has the veth's MAC,
// address and MTU, and the node side reaches the pod IP, which answers from
// inside the VM; teardown leaves no tap or filter in the pod netns. Both
// internetworking models.
func TestShimPodNetwork(t *testing.T) {
	if _, err := exec.LookPath("busybox"); err != nil {
		ctrtest.Missing(t, "busybox (busybox-static) on the host for ping")
	}
	for _, model := range []string{"tcfilter", "macvtap"} {
		t.Run(model, func(t *testing.T) { testPodNetwork(t, model) })
	}
}

func testPodNetwork(t *testing.T, model string) {
	c, ctx := startKasaHarnessWith(t, 5*time.Minute, "\n[runtime]\ninternetworking_model = \""+model+"\"\n")
	netns, podIP, inPeer := podNetns(t)
	mac, err := exec.Command("ip", "-n", strings.TrimPrefix(netns, "/var/run/netns/"), "-br", "link", "show", "eth0").Output()
	if err != nil {
		t.Fatal(err)
	}
	vethMAC := strings.Fields(string(mac))[2]

	const id = "kasa-net"
	startDetached(t, ctx, c, id, []string{"--with-ns", "network:" + netns}, "sleep", "1000")
	defer removeTask(t, ctx, c, id)

	out := mustCtr(t, ctx, c, "task", "exec", "--exec-id", "n1", id, "sh", "-c",
		"cat /sys/class/net/eth0/address /sys/class/net/eth0/mtu; ip -4 addr show eth0; ip route")
	if !strings.Contains(out, vethMAC) || !strings.Contains(out, "1400") || !strings.Contains(out, podIP+"/24") || !strings.Contains(out, "default via") {
		t.Fatalf("guest network does not mirror the pod veth (%s, %s/24, mtu 1400, default route):\n%s", vethMAC, podIP, out)
	}
	if res, err := inPeer("busybox", "ping", "-c", "2", "-W", "5", podIP); err != nil {
		t.Fatalf("node side cannot reach the pod IP %s: %v\n%s", podIP, err, res)
	}

	kind, _ := exec.Command("ip", "-n", strings.TrimPrefix(netns, "/var/run/netns/"), "-d", "link", "show", "tap0_kasa").Output()
	if want := map[string]string{"tcfilter": "tun type tap", "macvtap": "macvtap mode bridge"}[model]; !strings.Contains(string(kind), want) {
		t.Errorf("tap0_kasa is not what %s makes (%q):\n%s", model, want, kind)
	}

	removeTask(t, ctx, c, id)
	left, _ := exec.Command("ip", "-n", strings.TrimPrefix(netns, "/var/run/netns/"), "-br", "link").Output()
	if strings.Contains(string(left), "_kasa") {
		t.Fatalf("tap left in the pod netns:\n%s", left)
	}
	if !strings.Contains(string(left), vethMAC) {
		t.Errorf("the veth does not have its MAC %s back:\n%s", vethMAC, left)
	}
	if q, _ := exec.Command("tc", "-n", strings.TrimPrefix(netns, "/var/run/netns/"), "qdisc", "show", "dev", "eth0", "ingress").Output(); len(strings.TrimSpace(string(q))) > 0 {
		t.Fatalf("ingress qdisc left on the pod veth: %s", q)
	}
}

// A shim killed while its pod had a network leaves a tap and tc filters in
// the pod netns; the shim delete containerd runs must remove them too.
func TestShimCrashCleansPodNetwork(t *testing.T) {
	c, ctx := startKasaHarness(t, 5*time.Minute)
	netns, _, _ := podNetns(t)
	ns := strings.TrimPrefix(netns, "/var/run/netns/")
	const id = "kasa-netcrash"
	startDetached(t, ctx, c, id, []string{"--with-ns", "network:" + netns}, "sleep", "1000")
	if links, _ := exec.Command("ip", "-n", ns, "-br", "link").Output(); !strings.Contains(string(links), "tap0_kasa") {
		t.Fatalf("no tap in the pod netns while running:\n%s", links)
	}
	for _, pid := range shimProcesses(id) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		links, _ := exec.Command("ip", "-n", ns, "-br", "link").Output()
		q, _ := exec.Command("tc", "-n", ns, "qdisc", "show", "dev", "eth0", "ingress").Output()
		if !strings.Contains(string(links), "_kasa") && len(strings.TrimSpace(string(q))) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("15 s after the shim was killed the pod netns still has:\n%s\n%s", links, q)
		}
		time.Sleep(200 * time.Millisecond)
	}
	deleteTask(t, ctx, c, id)
}

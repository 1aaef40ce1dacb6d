//go:build integration

package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kasa-runtime/kasa/test/ctrtest"
)

// iptablesImage is busybox with Debian's iptables (nft and legacy, IPv4
// and IPv6) and its xtables extensions, their shared libraries with them.
const iptablesImage = "localhost/kasa-test/iptables:1"

func iptablesImageOptions(t *testing.T) ctrtest.ImageOptions {
	t.Helper()
	ext, _ := filepath.Glob("/usr/lib/*/xtables")
	tools := []string{"/usr/sbin/iptables-nft", "/usr/sbin/iptables-legacy", "/usr/sbin/ip6tables-nft", "/usr/sbin/ip6tables-legacy"}
	for _, p := range tools {
		if _, err := os.Stat(p); err != nil || len(ext) != 1 {
			ctrtest.Missing(t, "%s and /usr/lib/<arch>/xtables (apt-get install iptables)", p)
		}
	}
	applets, err := ctrtest.AllApplets("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	return ctrtest.ImageOptions{
		Name: iptablesImage, Applets: applets,
		HostFiles: append(tools, ext[0]),
	}
}

// meshInit is what istio-init and linkerd-init do, with both iptables
// flavours: REDIRECT the pod's outgoing TCP to the proxy's port (8001 with
// iptables-legacy, 8002 with iptables-nft, whose owner and comment matches
// go through nft_compat), for IPv4 and IPv6; and what a TPROXY setup adds
// (mangle rules with the socket match, a fwmark rule to a local route).
const meshInit = `set -e
iptables-legacy -t nat -A OUTPUT -p tcp --dport 8001 -m owner ! --uid-owner 1337 -m comment --comment kasa-legacy -j REDIRECT --to-ports 8080
ip6tables-legacy -t nat -A OUTPUT -p tcp --dport 8001 -j REDIRECT --to-ports 8080
iptables-nft -t nat -A OUTPUT -p tcp --dport 8002 -m owner ! --uid-owner 1337 -m comment --comment kasa-nft -j REDIRECT --to-ports 8080
ip6tables-nft -t nat -A OUTPUT -p tcp --dport 8002 -j REDIRECT --to-ports 8080
iptables-nft -t mangle -A PREROUTING -p tcp -m socket --transparent -j MARK --set-mark 1
iptables-legacy -t mangle -A PREROUTING -p tcp --dport 9000 -m conntrack --ctstate NEW -j TPROXY --on-port 15006 --tproxy-mark 1/1
ip rule add fwmark 1 lookup 133
ip route add local 0.0.0.0/0 dev lo table 133
iptables-legacy -t nat -S OUTPUT
iptables-nft -t nat -S OUTPUT
echo mesh-init-done
`

// TestCRIPodKernel: what pods do with their guest kernel, in one pod of the
// "kata" handler. A NET_ADMIN container that runs to completion, as a
// service mesh's init container does, installs REDIRECT rules with
// iptables-legacy and iptables-nft; the next container, a web server on
// 8080, is reached through both redirected ports, over IPv4 and IPv6.
// That container, privileged, creates a bridge, a veth in it and a VXLAN
// link, and sees bridge netfilter.
func TestCRIPodKernel(t *testing.T) {
	c, ctx := startCRIHarness(t, 6*time.Minute, nil, iptablesImageOptions(t))
	podCfg := ctrtest.PodConfig("kernelnet")
	podCfg["linux"].(map[string]any)["security_context"].(map[string]any)["privileged"] = true
	podCfg["log_directory"] = t.TempDir()
	podID := runPod(t, ctx, c, podCfg)

	initCfg := containerConfig("mesh-init", iptablesImage, []string{"sh", "-c", meshInit})
	initCfg["linux"] = map[string]any{"security_context": map[string]any{"capabilities": map[string]any{"add_capabilities": []string{"NET_ADMIN"}}}}
	initID := startContainer(t, ctx, c, podID, podCfg, initCfg)
	code := waitExited(t, ctx, c, initID)
	logs, err := c.Crictl(ctx, "logs", initID) // stderr's lines come on crictl's stderr
	if err != nil {
		t.Fatal(err)
	}
	if code != 0 {
		t.Fatalf("mesh-init exited %d:\n%s%s", code, logs.Stdout, logs.Stderr)
	}
	t.Logf("mesh-init:\n%s", logs.Stdout)

	appCfg := containerConfig("app", ctrtest.WebServerImage, []string{"httpd", "-f", "-p", "8080", "-h", "/usr/share/nginx/html"})
	appCfg["linux"] = map[string]any{"security_context": map[string]any{"privileged": true}}
	app := startContainer(t, ctx, c, podID, podCfg, appCfg)
	inApp := func(t *testing.T, cmd ...string) (string, bool) {
		t.Helper()
		res, err := c.Crictl(ctx, append([]string{"exec", "--sync", "--timeout", "60", app}, cmd...)...)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(res.Stdout + res.Stderr), res.ExitCode == 0
	}

	t.Run("redirected by the init container's rules", func(t *testing.T) {
		// timeout, not wget -T: Debian's busybox 1.35 wget crashes with -T.
		get := func(url string) (string, bool) { return inApp(t, "timeout", "10", "wget", "-q", "-O", "-", url) }
		// httpd listens on 8080 soon after its container starts.
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
			if _, ok := get("http://127.0.0.1:8080/"); ok {
				break
			}
		}
		for _, url := range []string{"http://127.0.0.1:8080/", "http://127.0.0.1:8001/", "http://127.0.0.1:8002/", "http://[::1]:8001/", "http://[::1]:8002/"} {
			if out, ok := get(url); !ok || out+"\n" != ctrtest.WebServerBody {
				t.Errorf("GET %s: %q, want the page served on 8080", url, out)
			}
		}
		if out, ok := get("http://127.0.0.1:8003/"); ok {
			t.Errorf("GET on 8003, which no rule redirects, succeeded: %q", out)
		}
	})
	t.Run("privileged container builds a bridge", func(t *testing.T) {
		script := `set -e
ip link add br0 type bridge
ip link set br0 up
ip link add kv0 type veth peer name kv1
ip link set kv0 master br0
brctl addbr br1
ip link add vx0 type vxlan id 42 dstport 4789 dev lo
ip link add kd0 type dummy
ip -o link show br0 | grep -q ',UP' && echo br0 up
echo kv0 in $(basename $(readlink /sys/class/net/kv0/master))
test -d /sys/class/net/br1/bridge && echo br1 a bridge
grep DEVTYPE= /sys/class/net/vx0/uevent
echo bridge-nf-call-iptables $(cat /proc/sys/net/bridge/bridge-nf-call-iptables)`
		out, ok := inApp(t, "sh", "-c", script)
		want := "br0 up\nkv0 in br0\nbr1 a bridge\nDEVTYPE=vxlan\nbridge-nf-call-iptables "
		if !ok || !strings.HasPrefix(out, want) {
			t.Errorf("bridge, veth, vxlan, dummy and bridge netfilter: got\n%s\nwant\n%s0|1", out, want)
		}
	})
	meminfo, _ := inApp(t, "head", "-n", "3", "/proc/meminfo")
	t.Logf("guest memory with this kernel:\n%s", meminfo)

	crictl(t, ctx, c, "rmp", "--force", podID)
	ctrtest.AssertNoLeftovers(t, c, podID, initID, app)
	assertNoTaps(t)
}

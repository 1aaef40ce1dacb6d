//go:build integration

package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kasa-runtime/kasa/test/ctrtest"
)

// crioDir is where the CRI-O build the tests use lives: $KASA_TEST_CRIO_DIR
// (the Makefile sets it to ../shared/cri-o from the repository's root), or
// ../shared/cri-o beside the clone.
func crioDir() string {
	if d := os.Getenv("KASA_TEST_CRIO_DIR"); d != "" {
		return d
	}
	d, _ := filepath.Abs("../../../shared/cri-o")
	return d
}

// startCRIOHarness is a private CRI-O (ctrtest.StartCRIO) with Kasa's
// drop-in as shipped, this build's shim and the test's guest image bound on
// the drop-in's paths, a CNI bridge of its own and images from the
// in-process registry. It checks that CRI-O took the handler and that the
// shim answered its --version.
func startCRIOHarness(t *testing.T, timeout time.Duration) (*ctrtest.CRIO, context.Context) {
	t.Helper()
	guest := requireVM(t)
	crio := crioDir()
	for _, b := range []string{"crio", "pinns"} {
		if _, err := os.Stat(filepath.Join(crio, b)); err != nil {
			ctrtest.Missing(t, "CRI-O's %s in %s (a build of CRI-O v1.36 in ../shared/cri-o beside the clone, or KASA_TEST_CRIO_DIR): %v", b, crio, err)
		}
	}
	repo, _ := filepath.Abs("../..")
	bin := filepath.Join(repo, "bin")
	for _, b := range []string{ctrtest.ShimKasa, "crictl"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			ctrtest.Missing(t, "%s/%s (make build; hack/install-cri-tools.sh bin)", bin, b)
		}
	}
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		ctrtest.Missing(t, "CNI plugins in /usr/lib/cni (apt-get install containernetworking-plugins)")
	}
	conf := filepath.Join(t.TempDir(), "configuration.toml")
	body := fmt.Sprintf("[hypervisor.qemu]\nkernel = %q\ninitrd = %q\n\n[agent.kata]\ndial_timeout = 60\n",
		filepath.Join(guest, "vmlinuz"), filepath.Join(guest, "initrd.img"))
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	reg, err := ctrtest.StartCRIRegistry(repo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	c := ctrtest.StartCRIO(t, ctrtest.CRIOOptions{
		CRIODir: crio, DropIn: filepath.Join(repo, "configuration", "runtime", "crio-kata.conf"),
		Shim: filepath.Join(bin, ctrtest.ShimKasa), KasaConfig: conf,
		RegistryMirror: reg.Addr, PauseImage: ctrtest.PauseImage, Crictl: filepath.Join(bin, "crictl"),
		Debug: os.Getenv("KASA_TEST_DEBUG") != "",
	})
	log := c.Log()
	if strings.Contains(log, `Runtime handler \"kata\" is being ignored`) {
		t.Fatalf("CRI-O ignored the kata handler of the shipped drop-in:\n%s", c.LogTail(40))
	}
	if !strings.Contains(log, "Using runtime handler "+ctrtest.ShimKasa+" (Kasa) version") {
		t.Errorf("CRI-O did not log the shim's --version answer")
	}
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	t.Cleanup(cancel)
	crictl(t, ctx, c, "pull", ctrtest.PauseImage)
	return c, ctx
}

// vmLeftovers is what of sandbox id must be gone once its VM stopped, its
// shim still serving: QEMU, Kasa's directories and mounts.
func vmLeftovers(ctx context.Context, c *ctrtest.CRIO, id string) []string {
	var left []string
	for _, l := range c.FindLeftovers(ctx, id) {
		if strings.HasPrefix(l, "qemu ") || strings.HasPrefix(l, "directory ") || strings.HasPrefix(l, "mount") {
			left = append(left, l)
		}
	}
	return left
}

// waitVMGone polls vmLeftovers for up to timeout.
func waitVMGone(t *testing.T, ctx context.Context, c *ctrtest.CRIO, id string, timeout time.Duration, after string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		left := vmLeftovers(ctx, c, id)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%v after %s:\n  %s", timeout, after, strings.Join(left, "\n  "))
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestCRIOPod runs a pod of two containers under CRI-O with the kata
// handler: its own VM, the pod IP reachable from the host, DNS and hostname,
// one IPC namespace and /dev/shm (CRI-O's pinned namespaces), an emptyDir
// shared, exec with its exit code, logs; StopPodSandbox stops the VM, and
// RemovePodSandbox leaves nothing.
func TestCRIOPod(t *testing.T) {
	c, ctx := startCRIOHarness(t, 6*time.Minute)
	emptyDir := t.TempDir()
	podCfg := ctrtest.PodConfig("crioweb")
	podID := runPod(t, ctx, c, podCfg)
	web := startContainer(t, ctx, c, podID, podCfg, containerConfig("httpd", ctrtest.WebServerImage, nil,
		map[string]any{"container_path": "/shared", "host_path": emptyDir}))
	tool := startContainer(t, ctx, c, podID, podCfg, containerConfig("tool", ctrtest.BusyboxImage,
		[]string{"sh", "-c", "echo hello-from-crio; exec sleep 3600"},
		map[string]any{"container_path": "/shared", "host_path": emptyDir}))
	inPod := func(t *testing.T, id string, cmd ...string) string {
		t.Helper()
		return crictl(t, ctx, c, append([]string{"exec", "--sync", "--timeout", "60", id}, cmd...)...)
	}

	t.Run("own kernel", func(t *testing.T) {
		host, _ := os.ReadFile("/proc/sys/kernel/osrelease")
		if guest := inPod(t, tool, "uname", "-r"); guest == strings.TrimSpace(string(host)) || guest == "" {
			t.Errorf("container kernel %q, host kernel %q: not in a VM", guest, host)
		}
	})
	t.Run("pod IP from the host", func(t *testing.T) {
		body, err := httpGet(ctx, "http://"+podIP(t, ctx, c, podID)+"/")
		if err != nil || body != ctrtest.WebServerBody {
			t.Errorf("page %q, %v; want %q", body, err, ctrtest.WebServerBody)
		}
	})
	t.Run("DNS and hostname", func(t *testing.T) {
		resolv := inPod(t, tool, "cat", "/etc/resolv.conf")
		for _, want := range []string{"nameserver 10.96.0.10", "search kasatest.svc.cluster.local", "options ndots:5"} {
			if !strings.Contains(resolv, want) {
				t.Errorf("resolv.conf %q lacks %q", resolv, want)
			}
		}
		if h := inPod(t, tool, "hostname"); h != "crioweb" {
			t.Errorf("hostname %q, want crioweb", h)
		}
	})
	t.Run("pinned namespaces: one IPC namespace and shm per pod", func(t *testing.T) {
		inPod(t, web, "sh", "-c", "echo shm-note > /dev/shm/note")
		if got := inPod(t, tool, "cat", "/dev/shm/note"); got != "shm-note" {
			t.Errorf("/dev/shm not shared: %q", got)
		}
		if a, b := inPod(t, web, "readlink", "/proc/self/ns/ipc"), inPod(t, tool, "readlink", "/proc/self/ns/ipc"); a != b {
			t.Errorf("IPC namespaces differ: %s, %s", a, b)
		}
		if a, b := inPod(t, web, "readlink", "/proc/self/ns/uts"), inPod(t, tool, "readlink", "/proc/self/ns/uts"); a != b {
			t.Errorf("UTS namespaces differ: %s, %s", a, b)
		}
	})
	t.Run("emptyDir shared", func(t *testing.T) {
		inPod(t, web, "sh", "-c", "echo written-by-httpd > /shared/note")
		if got := inPod(t, tool, "cat", "/shared/note"); got != "written-by-httpd" {
			t.Errorf("the other container reads %q", got)
		}
	})
	t.Run("exec exit code", func(t *testing.T) {
		res, err := c.Crictl(ctx, "exec", tool, "sh", "-c", "exit 7")
		if err != nil || res.ExitCode == 0 || !strings.Contains(res.Stderr, "exit code 7") {
			t.Errorf("exec exit status: %v %v, want exit code 7", res, err)
		}
	})
	t.Run("logs", func(t *testing.T) {
		if out := crictl(t, ctx, c, "logs", tool); !strings.Contains(out, "hello-from-crio") {
			t.Errorf("logs %q lack hello-from-crio", out)
		}
	})

	// CRI-O gives each container what is left of the request's deadline
	// (crictl's 120s) to stop after SIGTERM, which httpd and sleep as PID 1
	// ignore: stop them first with a short grace period, as the kubelet
	// would with terminationGracePeriodSeconds: 1.
	crictl(t, ctx, c, "stop", "--timeout", "1", web, tool)
	start := time.Now()
	crictl(t, ctx, c, "stopp", podID)
	t.Logf("stopp took %v", time.Since(start).Round(time.Millisecond))
	// CRI-O's StopPodSandbox kills the sandbox container and deletes it
	// only at RemovePodSandbox: the VM must be gone already.
	waitVMGone(t, ctx, c, podID, 10*time.Second, "StopPodSandbox")
	crictl(t, ctx, c, "rmp", podID)
	c.AssertNoLeftovers(t, podID, web, tool)
	assertNoTaps(t)
}

// TestCRIOShimKilled: CRI-O never runs `shim delete`. After kill -9 of a
// pod's shim, QEMU dies with it (its parent-death signal) and the
// sandbox's reaper removes its state and mounts at once; removing the pod
// (after a CRI-O restart, see below) leaves nothing.
func TestCRIOShimKilled(t *testing.T) {
	c, ctx := startCRIOHarness(t, 4*time.Minute)
	podCfg := ctrtest.PodConfig("crioshimkill")
	podID := runPod(t, ctx, c, podCfg)
	id := startContainer(t, ctx, c, podID, podCfg, containerConfig("sleeper", ctrtest.BusyboxImage, []string{"sleep", "3600"}))
	out, err := exec.Command("pgrep", "-f", ctrtest.ShimKasa+" .*-id "+podID).Output()
	pids := strings.Fields(string(out))
	if err != nil || len(pids) != 1 {
		t.Fatalf("the pod's shim: pgrep %v %q", err, out)
	}
	if err := exec.Command("kill", "-KILL", pids[0]).Run(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	waitVMGone(t, ctx, c, podID, 20*time.Second, "kill -9 of the shim")
	t.Logf("QEMU, state and mounts gone %v after the shim's kill -9", time.Since(killed).Round(time.Millisecond))
	// CRI-O keeps one ttrpc client per container and never redials it: a
	// dead shim's pod cannot be stopped by the CRI-O that started it
	// ("ttrpc: closed"), whatever the runtime; a restarted CRI-O can.
	res, err := c.Crictl(ctx, "rmp", "--force", podID)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 {
		if !strings.Contains(res.Stderr, "ttrpc: closed") {
			t.Fatalf("rmp after the shim's death: %s", res)
		}
		t.Logf("rmp before a CRI-O restart: exit %d, ttrpc: closed; restarting CRI-O", res.ExitCode)
		if err := c.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		// The harness's CRI-O pins namespaces inside its own mount
		// namespace, which its restart ends: the restarted CRI-O cannot
		// restore the pod and removes it itself.
		res, err := c.Crictl(ctx, "rmp", "--force", podID)
		if err != nil || res.ExitCode != 0 && !strings.Contains(res.Stderr, "not found") {
			t.Fatalf("rmp after CRI-O's restart: %v %s", err, res)
		}
	}
	c.AssertNoLeftovers(t, podID, id)
	assertNoTaps(t)
}

// crioCritestSkip: critest checks a hostPort at http://127.0.0.1:<port>.
// Under containerd the CNI portmap plugin maps it (it sets route_localnet
// and masquerades localhost); CRI-O maps hostPorts itself with DNAT rules
// that do neither, so a node without route_localnet (kube-proxy sets it)
// drops the packets as martians, whatever the runtime. The pod-IP and
// container-port specs run.
//
// Port forwarding: CRI-O's runtime_type "vm" has no PortForward (its
// runtimeVM.PortForwardContainer returns nil without dialing anything), so
// the client gets EOF before any connection reaches the pod's netns, where
// Kasa's forwarder waits; under containerd the same spec passes.
const crioCritestSkip = `port mapping with host port and container port|portforward`

// TestCRIOCRITest runs critest's focus set (TestCRITest's) under CRI-O with
// the kata handler.
func TestCRIOCRITest(t *testing.T) {
	repo, _ := filepath.Abs("../..")
	critest := filepath.Join(repo, "bin", "critest")
	if _, err := os.Stat(critest); err != nil {
		ctrtest.Missing(t, "%s (hack/install-cri-tools.sh bin)", critest)
	}
	c, ctx := startCRIOHarness(t, 25*time.Minute)
	args := []string{
		"-runtime-endpoint", "unix://" + c.Address, "-image-endpoint", "unix://" + c.Address,
		"-runtime-handler", "kata", "-ginkgo.focus", critestFocus, "-ginkgo.skip", critestSkip + "|" + crioCritestSkip,
		"-ginkgo.no-color", "-ginkgo.v",
	}
	cmd := exec.CommandContext(ctx, critest, args...)
	cmd.Dir = t.TempDir()
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if dir := os.Getenv("KASA_TEST_KEEP_LOGS"); dir != "" {
		os.WriteFile(filepath.Join(dir, "TestCRIOCRITest.critest.log"), out, 0o644)
	}
	ran := regexp.MustCompile(`Ran (\d+) of (\d+) Specs`).FindStringSubmatch(string(out))
	passed := regexp.MustCompile(`(\d+) Passed \| (\d+) Failed \| (\d+) Pending \| (\d+) Skipped`).FindStringSubmatch(string(out))
	if err != nil || ran == nil || passed == nil || passed[2] != "0" {
		t.Fatalf("critest: %v\n%s", err, out)
	}
	if ran[1] == "0" {
		t.Fatalf("critest ran no spec:\n%s", out)
	}
	t.Logf("critest v1.30 under CRI-O with handler kata: ran %s of %s specs in %v: %s passed, %s failed, %s skipped",
		ran[1], ran[2], time.Since(start).Round(time.Second), passed[1], passed[2], passed[4])
	c.AssertNoLeftovers(t)
}

//go:build integration

package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/kasa-runtime/kasa/test/ctrtest"
)

// The CRI tests run against two containerds: Debian's 1.6 (containerd and
// ctr on PATH, config version 2) and containerd 2.x built by `make
// containerd2` (KASA_TEST_CONTAINERD2, default bin/containerd2/containerd,
// config version 3, with its own ctr and runc shim beside it).
//
// To keep CI's time in bounds, only these run on both: TestCRIPod,
// TestCRICrictl, TestCRIShimKilled, TestCRITest (critest's focus set) and
// TestCRIPodSysctlsAndSizing; TestRegisterContainerd registers with both
// config formats (no VM). TestCRISharedPIDNamespace, TestCRIFailures and
// TestCRIConfinedVMM run on 1.6 only: they check the shim and the agent,
// not what containerd sends.

// containerdUnderTest is one containerd the CRI tests run against.
type containerdUnderTest struct {
	// name is the subtest's: "containerd-1.6", "containerd-2.4".
	name    string
	release ctrtest.Release
	// opts points the harness at it; nil for Debian's, on PATH.
	opts func(*ctrtest.Options)
}

// containerd2Path is containerd 2.x's binary: KASA_TEST_CONTAINERD2, or
// bin/containerd2/containerd of this repository.
func containerd2Path() string {
	if p := os.Getenv("KASA_TEST_CONTAINERD2"); p != "" {
		return p
	}
	repo, _ := filepath.Abs("../..")
	return filepath.Join(repo, "bin", "containerd2", "containerd")
}

// onContainerds runs body as one subtest per containerd: Debian's 1.6 (on
// PATH) and containerd 2.x (containerd2Path). A missing containerd 2.x
// skips its subtest outside CI, saying why, and fails it under CI=true.
func onContainerds(t *testing.T, body func(t *testing.T, ctd containerdUnderTest)) {
	name, rel := "containerd-1", ctrtest.Release{}
	if p, err := exec.LookPath("containerd"); err == nil {
		if r, err := ctrtest.BinaryRelease(p); err == nil {
			name, rel = "containerd-"+r.String(), r
		}
	}
	t.Run(name, func(t *testing.T) { body(t, containerdUnderTest{name: name, release: rel}) })

	name, rel, relErr := containerd2Release()
	t.Run(name, func(t *testing.T) { body(t, containerd2(t, rel, relErr)) })
}

// containerd2Release names containerd 2.x's subtest after its release.
func containerd2Release() (string, ctrtest.Release, error) {
	r, err := ctrtest.BinaryRelease(containerd2Path())
	if err != nil {
		return "containerd-2", ctrtest.Release{}, err
	}
	return "containerd-" + r.String(), r, nil
}

// containerd2 is containerd 2.x for a test that runs on it alone. A
// missing build skips the test outside CI, saying why, and fails it under
// CI=true.
func containerd2(t *testing.T, rel ctrtest.Release, relErr error) containerdUnderTest {
	t.Helper()
	path := containerd2Path()
	if relErr != nil {
		ctrtest.Missing(t, "containerd 2.x at %s (make containerd2; KASA_TEST_CONTAINERD2 names another): %v", path, relErr)
	}
	if !rel.V2() {
		t.Fatalf("%s is containerd %s, not 2.x", path, rel.Text)
	}
	dir := filepath.Dir(path)
	for _, b := range []string{"ctr", "containerd-shim-runc-v2"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			ctrtest.Missing(t, "%s beside %s (make containerd2)", b, path)
		}
	}
	return containerdUnderTest{name: "containerd-" + rel.String(), release: rel, opts: func(o *ctrtest.Options) {
		o.Containerd, o.Ctr = path, filepath.Join(dir, "ctr")
		// Its own runc shim, first on containerd's PATH.
		o.BinDirs = append([]string{dir}, o.BinDirs...)
	}}
}

// bundleSpec is the OCI spec containerd gave the shim for container id (a
// pod's sandbox or one of its containers): the bundle's config.json under
// containerd's state directory, CRI's namespace k8s.io.
func bundleSpec(t *testing.T, c *ctrtest.Containerd, id string) specs.Spec {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.State, "io.containerd.runtime.v2.task", "k8s.io", id, "config.json"))
	if err != nil {
		t.Fatalf("the bundle's spec: %v", err)
	}
	var s specs.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestCRIPodSysctlsAndSizing: what containerd puts in a pod's sandbox spec
// reaches the VM. containerd 2.x adds net.ipv4.ip_unprivileged_port_start=0
// and net.ipv4.ping_group_range="0 2147483647" to every pod with its own
// network (enable_unprivileged_ports and _icmp, on by default); 1.6 does
// not. Pod-level net sysctls are the VM's: its network namespace is the
// pod's. The sizing annotations (io.kubernetes.cri.sandbox-cpu-quota,
// -period, sandbox-memory: the pod's limits) grow the VM beyond the
// configured default (1 vCPU, 512 MiB here).
func TestCRIPodSysctlsAndSizing(t *testing.T) { onContainerds(t, testCRIPodSysctlsAndSizing) }

func testCRIPodSysctlsAndSizing(t *testing.T, ctd containerdUnderTest) {
	c, ctx := startCRIHarness(t, 4*time.Minute, ctd.opts)
	const memLimit = 256 << 20
	podCfg := ctrtest.PodConfig("sized")
	linux := podCfg["linux"].(map[string]any)
	// What the kubelet sends for a pod of one container limited to one CPU
	// and 256 MiB, and a pod sysctl of its own.
	linux["resources"] = map[string]any{"cpu_period": 100000, "cpu_quota": 100000, "memory_limit_in_bytes": memLimit}
	linux["sysctls"] = map[string]string{"net.ipv4.ip_local_port_range": "20000 30000"}
	podID := runPod(t, ctx, c, podCfg)
	id := startContainer(t, ctx, c, podID, podCfg, containerConfig("probe", ctrtest.BusyboxImage, []string{"sleep", "3600"}))

	sb, ctr := bundleSpec(t, c, podID), bundleSpec(t, c, id)
	t.Logf("containerd %s: sandbox spec %s, sysctls %v, annotations %v", c.Release.Text, sb.Version, sb.Linux.Sysctl, sb.Annotations)
	t.Logf("containerd %s: container spec %s, sysctls %v, annotations %v", c.Release.Text, ctr.Version, ctr.Linux.Sysctl, ctr.Annotations)

	want := map[string]string{"net.ipv4.ip_local_port_range": "20000 30000"}
	if c.Release.V2() {
		want["net.ipv4.ip_unprivileged_port_start"] = "0"
		want["net.ipv4.ping_group_range"] = "0 2147483647"
	} else {
		// 1.6 leaves the guest kernel's defaults.
		want["net.ipv4.ip_unprivileged_port_start"] = "1024"
	}
	for k, v := range want {
		if c.Release.V2() || k == "net.ipv4.ip_local_port_range" {
			if sb.Linux.Sysctl[k] != v {
				t.Errorf("sandbox spec: sysctl %s = %q, want %q", k, sb.Linux.Sysctl[k], v)
			}
		}
		got := crictl(t, ctx, c, "exec", "--sync", id, "cat", "/proc/sys/"+strings.ReplaceAll(k, ".", "/"))
		if strings.Join(strings.Fields(got), " ") != v {
			t.Errorf("in the pod: %s = %q, want %q", k, got, v)
		}
	}
	if c.Release.V2() {
		// What the sysctl is for: a process that is not root binds port 80.
		web := containerConfig("nonroot", ctrtest.BusyboxImage, []string{"nc", "-l", "-p", "80"})
		web["linux"] = map[string]any{"security_context": map[string]any{"run_as_user": map[string]any{"value": 65534}}}
		webID := startContainer(t, ctx, c, podID, podCfg, web)
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(250 * time.Millisecond) {
			if out, _ := c.CrictlOK(ctx, "exec", "--sync", id, "netstat", "-ltn"); strings.Contains(out, ":80 ") {
				break
			}
			if time.Now().After(deadline) {
				out, _ := c.CrictlOK(ctx, "logs", webID)
				t.Errorf("nc as uid 65534 does not listen on port 80: %s", out)
				break
			}
		}
	}

	for _, a := range []string{"io.kubernetes.cri.sandbox-cpu-quota", "io.kubernetes.cri.sandbox-cpu-period", "io.kubernetes.cri.sandbox-memory"} {
		if _, ok := sb.Annotations[a]; !ok {
			t.Errorf("sandbox spec lacks the sizing annotation %s", a)
		}
	}
	if n := crictl(t, ctx, c, "exec", "--sync", id, "grep", "-c", "^processor", "/proc/cpuinfo"); n != "2" {
		t.Errorf("the VM has %s vCPUs, want 2 (1 configured + 1 for the pod's limit)", n)
	}
	meminfo := crictl(t, ctx, c, "exec", "--sync", id, "grep", "MemTotal", "/proc/meminfo")
	var kib int
	fmt.Sscanf(strings.TrimPrefix(meminfo, "MemTotal:"), "%d", &kib)
	// 512 MiB configured + 256 MiB for the limit, less what the guest
	// kernel keeps for itself.
	if mib := kib >> 10; mib <= 512 || mib > 512+256 {
		t.Errorf("the VM has %d MiB (%q), want 512 + 256 MiB less the kernel's share", mib, meminfo)
	}
	crictl(t, ctx, c, "rmp", "--force", podID)
	ctrtest.AssertNoLeftovers(t, c, podID, id)
}

//go:build integration

package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/kasa-runtime/kasa/metrics"
	"github.com/kasa-runtime/kasa/metrics/metricstest"
	"github.com/kasa-runtime/kasa/test/ctrtest"
)

// TestCRIMetrics scrapes `kasa monitor` during a pod's life and after it:
// the pod's series are there with plausible values (boot, guest memory and
// CPU, QEMU's memory, the agent's RPCs, a container's exit), the node
// counts the start and a failed one, and after the pod's removal its
// series and its metrics socket are gone.
func TestCRIMetrics(t *testing.T) {
	c, ctx := startCRIHarness(t, 5*time.Minute, nil)
	repo, _ := filepath.Abs("../..")
	url := startMonitor(t, ctx, filepath.Join(repo, "bin", "kasa"))
	before := scrapeMonitor(t, ctx, url)

	// A start refused by its configuration: its shim is gone by the next
	// scrape, and the node counts it all the same.
	bad := ctrtest.PodConfig("metricsbad")
	bad["annotations"] = map[string]string{"io.katacontainers.config.hypervisor.default_memory": "lots"}
	p, _ := c.WriteJSON("metricsbad.json", bad)
	if res, err := c.Crictl(ctx, "runp", "--runtime", "kata", p); err != nil || res.ExitCode == 0 {
		t.Fatalf("runp with default_memory=lots succeeded: %v %v", res, err)
	}

	podCfg := ctrtest.PodConfig("metrics")
	podID := runPod(t, ctx, c, podCfg)
	sleeper := startContainer(t, ctx, c, podID, podCfg, containerConfig("sleeper", ctrtest.BusyboxImage, []string{"sleep", "3600"}))
	done := startContainer(t, ctx, c, podID, podCfg, containerConfig("done", ctrtest.BusyboxImage, []string{"true"}))
	waitExited(t, ctx, c, done)

	during := scrapeMonitor(t, ctx, url)
	pod := map[string]string{metrics.LabelSandboxID: podID}
	atLeast := func(name string, labels map[string]string, min float64) {
		t.Helper()
		v, ok := sampleOf(during, name, labels)
		if !ok || v < min {
			t.Errorf("%s%v = %v (present %v), want ≥ %v", name, labels, v, ok, min)
		}
	}
	with := func(extra ...string) map[string]string {
		l := map[string]string{metrics.LabelSandboxID: podID}
		for i := 0; i+1 < len(extra); i += 2 {
			l[extra[i]] = extra[i+1]
		}
		return l
	}
	const mib = 1 << 20
	atLeast(metrics.SandboxBootSeconds, with(metrics.LabelPodName, "metrics", metrics.LabelPodNamespace, "kasatest"), 0.001)
	atLeast(metrics.SandboxBootPhaseSeconds, with("phase", "agent"), 0.001)
	atLeast(metrics.SandboxBootPhaseSeconds, with("phase", "vm_start"), 0.0001)
	atLeast("kasa_guest_memory_total_bytes", pod, 64*mib)
	atLeast("kasa_guest_memory_available_bytes", pod, 1*mib)
	atLeast("kasa_guest_cpus_online", pod, 1)
	atLeast("kasa_guest_cpu_seconds_total", with("mode", "idle"), 0.01)
	atLeast(metrics.HostProcessRSSBytes, with("process", "qemu"), 16*mib)
	atLeast(metrics.HostProcessPSSBytes, with("process", "qemu"), 16*mib)
	atLeast(metrics.HostProcessRSSBytes, with("process", "virtiofsd"), 0.1*mib)
	atLeast(metrics.HostProcessRSSBytes, with("process", "shim"), 1*mib)
	atLeast(metrics.AgentRPCSeconds+"_count", with("method", "CreateContainer"), 3)
	atLeast(metrics.AgentRPCSeconds+"_count", with("method", "Version"), 1)
	atLeast(metrics.AgentRPCSeconds+"_sum", with("method", "CreateContainer"), 0.0001)
	atLeast(metrics.ContainerExits, with("exit", metrics.ExitZero), 1)
	if _, ok := sampleOf(during, metrics.VsockConnections, pod); ok { // vhost-user-vsock only
		atLeast(metrics.VsockBytes, with("direction", "from_guest"), 1)
		atLeast(metrics.VsockBytes, with("direction", "to_guest"), 1)
	}
	if v, _ := sampleOf(during, metrics.GuestMetricsRejected, pod); v != 0 {
		t.Errorf("%s = %v: the shim refused what the agent sent", metrics.GuestMetricsRejected, v)
	}
	atLeast(metrics.MonitorShimUp, pod, 1)
	atLeast(metrics.SandboxesRunning, nil, 1)
	// The pod's boot says how its VM started, and the node counted a
	// start of that kind.
	var start string
	for _, m := range during[metrics.SandboxBootSeconds].GetMetric() {
		if metricstest.HasLabels(m, pod) {
			for _, l := range m.GetLabel() {
				if l.GetName() == "start" {
					start = l.GetValue()
				}
			}
		}
	}
	if start != metrics.StartCold && start != metrics.StartTemplate {
		t.Errorf("%s of the pod has start=%q, want %q or %q", metrics.SandboxBootSeconds, start, metrics.StartCold, metrics.StartTemplate)
	}
	atLeast(metrics.SandboxBootPhaseSeconds, with("phase", "agent", "start", start), 0.001)
	startsBefore, _ := sampleOf(before, metrics.SandboxStarts, map[string]string{"start": start})
	atLeast(metrics.SandboxStarts, map[string]string{"start": start}, startsBefore+1)
	configBefore, _ := sampleOf(before, metrics.SandboxStartFailures, map[string]string{"reason": metrics.ReasonConfig})
	atLeast(metrics.SandboxStartFailures, map[string]string{"reason": metrics.ReasonConfig}, configBefore+1)
	// The figures, for the log: the start's steps, what the pod costs.
	var fig strings.Builder
	for _, m := range during[metrics.SandboxBootPhaseSeconds].GetMetric() {
		if metricstest.HasLabels(m, pod) {
			for _, l := range m.GetLabel() {
				if l.GetName() == "phase" {
					fmt.Fprintf(&fig, " %s=%.3fs", l.GetValue(), m.GetGauge().GetValue())
				}
			}
		}
	}
	boot, _ := sampleOf(during, metrics.SandboxBootSeconds, pod)
	fig.WriteString(" (" + start + ")")
	rss, _ := sampleOf(during, metrics.HostProcessRSSBytes, with("process", "qemu"))
	pss, _ := sampleOf(during, metrics.HostProcessPSSBytes, with("process", "qemu"))
	guest, _ := sampleOf(during, "kasa_guest_memory_total_bytes", pod)
	t.Logf("boot %.3fs:%s; QEMU RSS %.1f MiB, PSS %.1f MiB; guest memory %.0f MiB", boot, fig.String(), rss/mib, pss/mib, guest/mib)
	if t.Failed() {
		t.Logf("scrape:\n%s", dumpSandbox(during, podID))
	}

	crictl(t, ctx, c, "stopp", podID)
	crictl(t, ctx, c, "rmp", podID)
	ctrtest.AssertNoLeftovers(t, c, podID, sleeper, done)
	if _, err := os.Stat(metrics.SocketPath(filepath.Join(ctrtest.KasaRunDir, "sbs"), podID)); !os.IsNotExist(err) {
		t.Errorf("metrics socket of the removed pod: %v", err)
	}
	after := scrapeMonitor(t, ctx, url)
	if left := dumpSandbox(after, podID); left != "" {
		t.Errorf("series of the removed pod still served:\n%s", left)
	}
}

// startMonitor runs `kasa monitor` on a port of the loopback and returns
// its metrics URL.
func startMonitor(t *testing.T, ctx context.Context, kasa string) string {
	t.Helper()
	cmd := exec.Command(kasa, "monitor", "--listen", "127.0.0.1:0")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("kasa monitor: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	const prefix = "kasa monitor: serving "
	if err != nil || !strings.HasPrefix(line, prefix) {
		t.Fatalf("kasa monitor said %q, %v", line, err)
	}
	go io.Copy(io.Discard, out)
	return strings.TrimSpace(strings.TrimPrefix(line, prefix))
}

// scrapeMonitor scrapes url as Prometheus would and parses the answer.
func scrapeMonitor(t *testing.T, ctx context.Context, url string) map[string]*dto.MetricFamily {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	req.Header.Set("Accept", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	return mfs
}

// sampleOf is the value of name's series with labels in a scrape.
func sampleOf(mfs map[string]*dto.MetricFamily, name string, labels map[string]string) (float64, bool) {
	return metricstest.Value(metricstest.Families(mfs), name, labels)
}

// dumpSandbox renders the series of sandbox id, "" if there are none.
func dumpSandbox(mfs map[string]*dto.MetricFamily, id string) string {
	var b strings.Builder
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if metricstest.HasLabels(m, map[string]string{metrics.LabelSandboxID: id}) {
				b.WriteString(mf.GetName() + " " + m.String() + "\n")
			}
		}
	}
	return b.String()
}

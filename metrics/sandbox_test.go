package metrics

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kasa-runtime/kasa/hypervisor"
	"github.com/kasa-runtime/kasa/metrics/metricstest"
	"github.com/kasa-runtime/kasa/virtcontainers"
)

type fakeSource struct {
	procs []virtcontainers.HostProcess
	vsock *hypervisor.VsockStats
	guest func(ctx context.Context) (string, error)
}

func (f fakeSource) HostProcesses() []virtcontainers.HostProcess { return f.procs }
func (f fakeSource) VsockStats() (hypervisor.VsockStats, bool) {
	if f.vsock == nil {
		return hypervisor.VsockStats{}, false
	}
	return *f.vsock, true
}
func (f fakeSource) GuestMetrics(ctx context.Context) (string, error) { return f.guest(ctx) }

// TestSandboxMetrics: a sandbox's series carry its labels, the host
// processes are read from /proc (a real child process stands for QEMU),
// the guest's are checked, and RPCs, OOMs and exits are counted.
func TestSandboxMetrics(t *testing.T) {
	child := exec.Command("sleep", "60")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { child.Process.Kill(); child.Wait() }()
	m := NewSandbox(PodLabelsFor("sb1", map[string]string{
		"io.kubernetes.cri.sandbox-name": "web", "io.kubernetes.cri.sandbox-namespace": "team-a", "io.kubernetes.cri.sandbox-uid": "u/../1",
	}))
	m.Attach(fakeSource{
		procs: []virtcontainers.HostProcess{{Name: "qemu", PID: child.Process.Pid}, {Name: "virtiofsd", PID: os.Getpid()}},
		vsock: &hypervisor.VsockStats{BytesFromGuest: 10, BytesToGuest: 20, ResetsSent: 1},
		guest: func(context.Context) (string, error) { return goodGuestText + "evil_family 1\n", nil },
	})
	m.ObserveRPC("CreateContainer", 2*time.Second, nil)
	m.ObserveRPC("CreateContainer", time.Millisecond, errors.New("no"))
	m.ContainerOOM()
	m.ContainerExit(0)
	m.ContainerExit(137)
	m.ContainerExit(1)
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	pod := map[string]string{LabelSandboxID: "sb1", LabelPodName: "web", LabelPodNamespace: "team-a"}
	with := func(k, v string) map[string]string {
		l := map[string]string{k: v}
		for a, b := range pod {
			l[a] = b
		}
		return l
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{ContainerOOMEvents, pod, 1},
		{ContainerExits, with(labelExit, ExitZero), 1},
		{ContainerExits, with(labelExit, ExitSignal), 1},
		{ContainerExits, with(labelExit, ExitNonzero), 1},
		{AgentRPCErrors, with(labelMethod, "CreateContainer"), 1},
		{VsockBytes, with(labelDirection, directionToGuest), 20},
		{VsockResets, pod, 1},
		{"kasa_guest_memory_total_bytes", pod, 201326592},
		{"kasa_guest_cpu_seconds_total", with("mode", "user"), 1.5},
		{GuestMetricsRejected, pod, 1},
	} {
		if v, ok := find(mfs, c.name, c.labels); !ok || v != c.want {
			t.Errorf("%s%v = %v, %v; want %v", c.name, c.labels, v, ok, c.want)
		}
	}
	if v, ok := find(mfs, HostProcessRSSBytes, with(labelProcess, "qemu")); !ok || v <= 0 {
		t.Errorf("qemu RSS %v, %v", v, ok)
	}
	if _, ok := find(mfs, HostProcessRSSBytes, with(labelProcess, "virtiofsd")); ok {
		t.Error("a process that is not the shim's child was read")
	}
	if _, ok := find(mfs, HostProcessPSSBytes, with(labelProcess, processShim)); !ok {
		t.Error("no PSS of the shim")
	}
	if _, ok := find(mfs, SandboxBootSeconds, pod); ok {
		t.Error("boot seconds before the boot finished")
	}
	for _, mf := range mfs {
		for _, metric := range mf.GetMetric() {
			for _, l := range metric.GetLabel() {
				if l.GetName() == LabelPodUID {
					t.Errorf("%s carries the invalid uid %q", mf.GetName(), l.GetValue())
				}
			}
		}
	}
	for _, mf := range mfs {
		if mf.GetName() == AgentRPCSeconds && (len(mf.GetMetric()) != 1 || mf.GetMetric()[0].GetHistogram().GetSampleCount() != 2) {
			t.Errorf("RPC histogram %v, want one series of 2 samples", mf)
		}
	}
}

// TestSandboxBootMetrics: the start's series say how the VM started, a
// clone of a template or a cold boot, on the whole start and each phase.
func TestSandboxBootMetrics(t *testing.T) {
	for _, start := range []virtcontainers.VMStart{virtcontainers.VMStartCold, virtcontainers.VMStartTemplate} {
		m := NewSandbox(PodLabels{SandboxID: "sb-" + string(start)})
		m.boot = virtcontainers.BootRecordForTest(start,
			virtcontainers.BootPhase{Step: virtcontainers.StepVMCreate, Duration: time.Second},
			virtcontainers.BootPhase{Step: virtcontainers.StepAgent, Duration: 2 * time.Second})
		mfs, err := m.Registry().Gather()
		if err != nil {
			t.Fatal(err)
		}
		labels := map[string]string{LabelSandboxID: "sb-" + string(start), labelStart: string(start)}
		if v, ok := find(mfs, SandboxBootSeconds, labels); !ok || v != 3 {
			t.Errorf("%s%v = %v, %v; want 3", SandboxBootSeconds, labels, v, ok)
		}
		labels[labelPhase] = string(virtcontainers.StepAgent)
		if v, ok := find(mfs, SandboxBootPhaseSeconds, labels); !ok || v != 2 {
			t.Errorf("%s%v = %v, %v; want 2", SandboxBootPhaseSeconds, labels, v, ok)
		}
		for _, mf := range mfs {
			if n := mf.GetName(); n != SandboxBootSeconds && n != SandboxBootPhaseSeconds {
				continue
			}
			for _, s := range mf.GetMetric() {
				if !metricstest.HasLabels(s, map[string]string{labelStart: string(start)}) {
					t.Errorf("%s series %v lacks start=%q", mf.GetName(), s.GetLabel(), start)
				}
			}
		}
	}
}

// TestSandboxMetricsSilentGuest: a guest that does not answer costs a
// scrape its guest series and at most the guest bound, nothing else.
func TestSandboxMetricsSilentGuest(t *testing.T) {
	m := NewSandbox(PodLabels{SandboxID: "sb2"})
	m.guestTimeout = 100 * time.Millisecond
	m.Attach(fakeSource{guest: func(ctx context.Context) (string, error) {
		<-ctx.Done()
		return "", ctx.Err()
	}})
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := find(mfs, "kasa_guest_memory_total_bytes", nil); ok {
		t.Error("guest series from a silent guest")
	}
	if _, ok := find(mfs, HostProcessRSSBytes, map[string]string{labelProcess: processShim}); !ok {
		t.Error("no host series beside a silent guest")
	}
}

func TestReadProcUsage(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "42")
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "stat"), []byte("42 (qemu (x) y) S 7 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 100 1000 200 18446744073709551615\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "smaps_rollup"), []byte("55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:              204800 kB\nPss:              102400 kB\nPss_Anon:          90000 kB\n"), 0o644)
	u, err := readProcUsage(root, 42, 7)
	if err != nil || u.rssBytes != 200<<20 || u.pssBytes != 100<<20 || u.cpuSeconds != 3 {
		t.Errorf("usage %+v, %v", u, err)
	}
	if _, err := readProcUsage(root, 42, 8); err == nil {
		t.Error("a process of another parent was read")
	}
	os.WriteFile(filepath.Join(dir, "smaps_rollup"), []byte("Rss: lots kB\n"), 0o644)
	if _, err := readProcUsage(root, 42, 7); err == nil {
		t.Error("a malformed smaps_rollup was read")
	}
}

func TestPodLabelsFor(t *testing.T) {
	crio := PodLabelsFor("id", map[string]string{"io.kubernetes.pod.name": "p", "io.kubernetes.pod.namespace": "ns", "io.kubernetes.pod.uid": "0a-1b"})
	if crio != (PodLabels{"id", "p", "ns", "0a-1b"}) {
		t.Errorf("CRI-O labels %+v", crio)
	}
	long := PodLabelsFor("id", map[string]string{"io.kubernetes.cri.sandbox-name": string(make([]byte, 300)), "io.kubernetes.cri.sandbox-namespace": "ns\n"})
	if long != (PodLabels{SandboxID: "id"}) {
		t.Errorf("invalid names kept: %+v", long)
	}
}

// TestBootSeriesMergeWithOlderShims: kasa monitor merges the families of
// every shim on the node, of whatever version; a shim from before the
// start label serves the same families with the same help, and both
// sandboxes' series are kept.
func TestBootSeriesMergeWithOlderShims(t *testing.T) {
	old := prometheus.NewRegistry()
	oldBoot := prometheus.NewGauge(prometheus.GaugeOpts{Name: SandboxBootSeconds,
		Help: "Duration of the sandbox's start, from the shim's first step to the guest ready.", ConstLabels: prometheus.Labels{LabelSandboxID: "old"}})
	oldBoot.Set(5)
	oldPhase := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: SandboxBootPhaseSeconds,
		Help: "Duration of each step of the sandbox's start.", ConstLabels: prometheus.Labels{LabelSandboxID: "old"}}, []string{labelPhase})
	oldPhase.WithLabelValues("agent").Set(4)
	old.MustRegister(oldBoot, oldPhase)

	m := NewSandbox(PodLabels{SandboxID: "new"})
	m.boot = virtcontainers.BootRecordForTest(virtcontainers.VMStartTemplate,
		virtcontainers.BootPhase{Step: virtcontainers.StepAgent, Duration: time.Second})
	mfs, err := prometheus.Gatherers{old, m.Registry()}.Gather()
	if err != nil {
		t.Fatalf("merging an older shim's boot series: %v", err)
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{SandboxBootSeconds, map[string]string{LabelSandboxID: "old"}, 5},
		{SandboxBootSeconds, map[string]string{LabelSandboxID: "new", labelStart: StartTemplate}, 1},
		{SandboxBootPhaseSeconds, map[string]string{LabelSandboxID: "old", labelPhase: "agent"}, 4},
		{SandboxBootPhaseSeconds, map[string]string{LabelSandboxID: "new", labelPhase: "agent", labelStart: StartTemplate}, 1},
	} {
		if v, ok := find(mfs, c.name, c.labels); !ok || v != c.want {
			t.Errorf("%s%v = %v, %v; want %v", c.name, c.labels, v, ok, c.want)
		}
	}
}

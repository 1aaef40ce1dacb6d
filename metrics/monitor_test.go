package metrics

import (
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kasa-runtime/kasa/metrics/metricstest"
	"github.com/kasa-runtime/kasa/virtcontainers"
)

// fakeShim serves h on sandbox id's metrics socket under root, as a shim
// does.
func fakeShim(t *testing.T, root, id string, h http.Handler) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(root, id), 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", SocketPath(root, id))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}

// sandboxRegistry is a shim's registry with one counter of value v.
func sandboxRegistry(id string, v float64) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: ContainerOOMEvents, Help: "OOMs."})
	c.Add(v)
	prometheus.WrapRegistererWith(prometheus.Labels{LabelSandboxID: id}, reg).MustRegister(c)
	return reg
}

var find = metricstest.Value

// TestMonitorGathersDespiteBadShims: the good shims' series are served,
// however the others misbehave: one hangs, one answers garbage, one
// answers series of another sandbox, one is a dead shim's socket. Each is
// marked down and counted by reason, and the scrape ends within the
// shims' bound (the test would hang otherwise).
func TestMonitorGathersDespiteBadShims(t *testing.T) {
	root := t.TempDir()
	fakeShim(t, root, "good1", promhttp.HandlerFor(sandboxRegistry("good1", 3), promhttp.HandlerOpts{}))
	fakeShim(t, root, "good2", promhttp.HandlerFor(sandboxRegistry("good2", 5), promhttp.HandlerOpts{}))
	hang := make(chan struct{})
	fakeShim(t, root, "hangs", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	defer close(hang)
	fakeShim(t, root, "garbage", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("kasa_x{{{ 12 not prometheus\n\x00\xff"))
	}))
	fakeShim(t, root, "foreign", promhttp.HandlerFor(sandboxRegistry("good1", 1000), promhttp.HandlerOpts{}))
	fakeShim(t, root, "huge", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(strings.Repeat("# a comment line that goes on and on\n", 1<<12)))
	}))
	// A dead shim's socket: nothing listens.
	if err := os.MkdirAll(filepath.Join(root, "dead"), 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", SocketPath(root, "dead"))
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	// A sandbox without a socket (booting) is not a shim to ask.
	os.MkdirAll(filepath.Join(root, "booting"), 0o700)

	m := NewMonitor(root)
	m.NodeRoot = t.TempDir()
	m.ShimTimeout = 300 * time.Millisecond
	m.MaxAnswerBytes = 64 << 10
	mfs, err := m.Gather()
	if err == nil {
		t.Error("Gather reported no error for the bad shims")
	}
	for id, want := range map[string]float64{"good1": 3, "good2": 5} {
		if v, ok := find(mfs, ContainerOOMEvents, map[string]string{LabelSandboxID: id}); !ok || v != want {
			t.Errorf("%s of %s = %v, %v; want %v", ContainerOOMEvents, id, v, ok, want)
		}
	}
	for id, want := range map[string]float64{"good1": 1, "good2": 1, "hangs": 0, "garbage": 0, "foreign": 0, "huge": 0, "dead": 0} {
		if v, ok := find(mfs, MonitorShimUp, map[string]string{LabelSandboxID: id}); !ok || v != want {
			t.Errorf("%s of %s = %v, %v; want %v", MonitorShimUp, id, v, ok, want)
		}
	}
	if _, ok := find(mfs, MonitorShimUp, map[string]string{LabelSandboxID: "booting"}); ok {
		t.Error("a sandbox without a metrics socket was asked")
	}
	for reason, want := range map[string]float64{ScrapeTimeout: 1, ScrapeBadAnswer: 3, ScrapeUnreachable: 1} {
		if v, _ := find(mfs, MonitorScrapeErrors, map[string]string{labelReason: reason}); v != want {
			t.Errorf("%s{reason=%s} = %v, want %v", MonitorScrapeErrors, reason, v, want)
		}
	}
	if v, _ := find(mfs, SandboxesRunning, nil); v != 6 {
		t.Errorf("%s = %v, want 6 (every shim that accepts a connection)", SandboxesRunning, v)
	}
}

// TestMonitorNodeCounters: starts and failed starts that shims recorded
// are served, starts by how the VM started, every reason present; an
// unknown reason counts as other.
func TestMonitorNodeCounters(t *testing.T) {
	old := NodeRoot
	NodeRoot = t.TempDir()
	defer func() { NodeRoot = old }()
	m := NewMonitor(filepath.Join(t.TempDir(), "none"))
	m.NodeRoot = NodeRoot
	mfs, err := m.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{StartCold, StartTemplate} {
		if v, ok := find(mfs, SandboxStarts, map[string]string{labelStart: s}); !ok || v != 0 {
			t.Errorf("%s{start=%s} = %v, %v before any start; want 0", SandboxStarts, s, v, ok)
		}
	}
	if _, ok := find(mfs, SandboxStarts, map[string]string{labelStart: StartUnknown}); ok {
		t.Errorf("%s{start=%s} served with nothing counted", SandboxStarts, StartUnknown)
	}

	for _, s := range []virtcontainers.VMStart{virtcontainers.VMStartCold, virtcontainers.VMStartTemplate, virtcontainers.VMStartTemplate, "", "../x"} {
		if err := RecordStart(s); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range []string{ReasonConfig, "agent", "agent", "../../etc/passwd"} {
		if err := RecordStartFailure(r); err != nil {
			t.Fatal(err)
		}
	}
	mfs, err = m.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for s, w := range map[string]float64{StartCold: 1, StartTemplate: 2, StartUnknown: 2} {
		if v, ok := find(mfs, SandboxStarts, map[string]string{labelStart: s}); !ok || v != w {
			t.Errorf("%s{start=%s} = %v, %v; want %v", SandboxStarts, s, v, ok, w)
		}
	}
	want := map[string]float64{ReasonConfig: 1, "agent": 2, ReasonOther: 1, "vm_start": 0}
	for r, w := range want {
		if v, ok := find(mfs, SandboxStartFailures, map[string]string{labelReason: r}); !ok || v != w {
			t.Errorf("%s{reason=%s} = %v, %v; want %v", SandboxStartFailures, r, v, ok, w)
		}
	}
	entries, _ := os.ReadDir(NodeRoot)
	if len(entries) != 6 {
		t.Errorf("counter files %v, want 6 (no file outside the fixed set)", entries)
	}
}

// TestNodeCountersConcurrent: shims counting at once lose no count.
func TestNodeCountersConcurrent(t *testing.T) {
	root := t.TempDir()
	const n, each = 8, 50
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			var err error
			for j := 0; j < each && err == nil; j++ {
				err = addCounter(root, startsFilePref+StartTemplate)
			}
			errs <- err
		}()
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	starts, _, err := nodeCounters(root)
	if err != nil || starts[StartTemplate] != n*each {
		t.Errorf("starts = %v, %v; want %d template starts", starts, err, n*each)
	}
}

// TestNodeCounterCorrupt: a counter file that is not a number is an
// error naming it, never a wrong count.
func TestNodeCounterCorrupt(t *testing.T) {
	root := t.TempDir()
	cold := startsFilePref + StartCold
	os.WriteFile(filepath.Join(root, cold), []byte("lots\n"), 0o600)
	if err := addCounter(root, cold); err == nil || !strings.Contains(err.Error(), cold) {
		t.Errorf("add to a corrupt counter: %v", err)
	}
	if _, _, err := nodeCounters(root); err == nil {
		t.Error("a corrupt counter read as a number")
	}
}

// TestServeRemovesSocket: a shim's endpoint answers on its socket, root
// only, and Close removes the socket.
func TestServeRemovesSocket(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "sb"), 0o700)
	path := SocketPath(root, "sb")
	os.WriteFile(path, nil, 0o600) // a stale file, as a dead shim leaves
	srv, err := Serve(path, sandboxRegistry("sb", 7))
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 || st.Mode()&os.ModeSocket == 0 {
		t.Errorf("socket mode %v, %v; want a socket, 0600", st.Mode(), err)
	}
	m := NewMonitor(root)
	m.NodeRoot = t.TempDir()
	mfs, err := m.Gather()
	if v, _ := find(mfs, ContainerOOMEvents, map[string]string{LabelSandboxID: "sb"}); err != nil || v != 7 {
		t.Errorf("scrape = %v, %v; want 7", v, err)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket left after Close: %v", err)
	}
	var nilServer *Server
	if err := nilServer.Close(); err != nil {
		t.Error(err)
	}
}

package metrics

import (
	"context"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kasa-runtime/kasa/hypervisor"
	"github.com/kasa-runtime/kasa/virtcontainers"
)

// Source is what a sandbox's metrics read at each scrape;
// *virtcontainers.Sandbox provides it.
type Source interface {
	HostProcesses() []virtcontainers.HostProcess
	VsockStats() (hypervisor.VsockStats, bool)
	GuestMetrics(ctx context.Context) (string, error)
}

// GuestTimeout bounds the agent's GetMetrics answer within a scrape: well
// under the monitor's bound, so that a silent guest costs its sandbox the
// guest series only.
const GuestTimeout = 2 * time.Second

// rpcBuckets span a prompt RPC on KVM (a millisecond) to a container's
// start under TCG (a minute).
var rpcBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// Sandbox holds one sandbox's metrics: its shim creates it before the
// sandbox's start, feeds it the start's steps, the agent's RPCs, OOMs and
// exits, attaches the sandbox once it runs, and serves Registry.
type Sandbox struct {
	reg  *prometheus.Registry
	boot *virtcontainers.BootRecord

	rpcSeconds *prometheus.HistogramVec
	rpcErrors  *prometheus.CounterVec
	ooms       prometheus.Counter
	exits      *prometheus.CounterVec
	// guestRejected counts what parseGuestMetrics dropped; reported by
	// the collector, in the scrape that dropped it.
	guestRejected atomic.Uint64

	mu  sync.Mutex
	src Source
	// guestMu keeps one GetMetrics in flight.
	guestMu sync.Mutex

	procRoot     string
	guestTimeout time.Duration
}

var _ prometheus.Collector = sandboxCollector{}

// NewSandbox returns the metrics of the sandbox labels names; every series
// carries labels.
func NewSandbox(labels PodLabels) *Sandbox {
	m := &Sandbox{
		reg:  prometheus.NewRegistry(),
		boot: virtcontainers.NewBootRecord(),
		rpcSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: AgentRPCSeconds,
			Help: "Duration of the agent's RPCs, by method.", Buckets: rpcBuckets}, []string{labelMethod}),
		rpcErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: AgentRPCErrors,
			Help: "Agent RPCs that returned an error, by method."}, []string{labelMethod}),
		ooms: prometheus.NewCounter(prometheus.CounterOpts{Name: ContainerOOMEvents,
			Help: "OOM kills in the sandbox's containers, as the guest reported them."}),
		exits: prometheus.NewCounterVec(prometheus.CounterOpts{Name: ContainerExits,
			Help: "Exits of the sandbox's containers' processes, by exit class (zero, signal, nonzero)."}, []string{labelExit}),
		procRoot: "/proc", guestTimeout: GuestTimeout,
	}
	r := prometheus.WrapRegistererWith(labels.prometheus(), m.reg)
	r.MustRegister(m.rpcSeconds, m.rpcErrors, m.ooms, m.exits, sandboxCollector{m})
	return m
}

// Registry is what the shim serves.
func (m *Sandbox) Registry() *prometheus.Registry { return m.reg }

// Boot is the record the sandbox's start fills (SandboxConfig.Boot).
func (m *Sandbox) Boot() *virtcontainers.BootRecord { return m.boot }

// ObserveRPC counts one agent RPC (client.Observer).
func (m *Sandbox) ObserveRPC(method string, took time.Duration, err error) {
	m.rpcSeconds.WithLabelValues(method).Observe(took.Seconds())
	if err != nil {
		m.rpcErrors.WithLabelValues(method).Inc()
	}
}

// ContainerOOM counts an OOM kill the shim forwarded (of a container it
// knows: the id was checked against its own table).
func (m *Sandbox) ContainerOOM() { m.ooms.Inc() }

// ContainerExit counts a process's exit by the class of its status.
func (m *Sandbox) ContainerExit(status uint32) {
	class := ExitNonzero
	switch {
	case status == 0:
		class = ExitZero
	case status > 128 && status <= 128+64:
		class = ExitSignal
	}
	m.exits.WithLabelValues(class).Inc()
}

// Attach gives the metrics the running sandbox to read from.
func (m *Sandbox) Attach(src Source) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.src = src
}

func (m *Sandbox) source() Source {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.src
}

// sandboxCollector reads, at each scrape, the start's record, the host
// processes, the vsock backend and the guest.
type sandboxCollector struct{ m *Sandbox }

var (
	// A family's help is a contract between shims of different versions:
	// kasa monitor merges every shim's families and drops those whose help
	// differs from the first one's (prometheus.Gatherers), so a label
	// added to a family keeps its help as it was.
	descBoot      = prometheus.NewDesc(SandboxBootSeconds, "Duration of the sandbox's start, from the shim's first step to the guest ready.", []string{labelStart}, nil)
	descBootPhase = prometheus.NewDesc(SandboxBootPhaseSeconds, "Duration of each step of the sandbox's start.", []string{labelPhase, labelStart}, nil)
	descRSS       = prometheus.NewDesc(HostProcessRSSBytes, "Resident memory of the sandbox's host processes (smaps_rollup Rss).", []string{labelProcess}, nil)
	descPSS       = prometheus.NewDesc(HostProcessPSSBytes, "Proportional set size of the sandbox's host processes (smaps_rollup Pss).", []string{labelProcess}, nil)
	descCPU       = prometheus.NewDesc(HostProcessCPUSeconds, "CPU time (user and system) of the sandbox's host processes.", []string{labelProcess}, nil)
	descVsockB    = prometheus.NewDesc(VsockBytes, "Stream payload through the vhost-user-vsock backend, by direction.", []string{labelDirection}, nil)
	descVsockR    = prometheus.NewDesc(VsockResets, "Streams the vsock backend reset.", nil, nil)
	descVsockC    = prometheus.NewDesc(VsockConnections, "Vsock streams open.", nil, nil)
	descVsockRef  = prometheus.NewDesc(VsockRefused, "Vsock streams refused at the backend's connection limit.", nil, nil)
	descVsockCV   = prometheus.NewDesc(VsockCreditViolations, "Vsock streams reset because the guest overran its credit.", nil, nil)
	descVsockPD   = prometheus.NewDesc(VsockPacketsDropped, "Malformed or misaddressed vsock packets of the guest, dropped.", nil, nil)
	descRejected  = prometheus.NewDesc(GuestMetricsRejected, "Guest metrics samples dropped as not what the agent may send, or malformed.", nil, nil)
	guestDescs    = map[string]*prometheus.Desc{}
)

func init() {
	for name := range guestFamilies {
		var labels []string
		if name == guestCPUSeconds {
			labels = []string{guestCPUModeLabel}
		}
		guestDescs[name] = prometheus.NewDesc(name, "The guest's own figure, as its agent reports it (agent/api/metrics.go).", labels, nil)
	}
}

func (c sandboxCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBoot, descBootPhase, descRSS, descPSS, descCPU, descRejected,
		descVsockB, descVsockR, descVsockC, descVsockRef, descVsockCV, descVsockPD} {
		ch <- d
	}
	for _, d := range guestDescs {
		ch <- d
	}
}

func (c sandboxCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	if total, ok := m.boot.Total(); ok {
		// A start that finished has created its VM: the label is set.
		start := string(m.boot.VMStart())
		ch <- prometheus.MustNewConstMetric(descBoot, prometheus.GaugeValue, total.Seconds(), start)
		for _, p := range m.boot.Phases() {
			ch <- prometheus.MustNewConstMetric(descBootPhase, prometheus.GaugeValue, p.Duration.Seconds(), string(p.Step), start)
		}
	}
	procs := []virtcontainers.HostProcess{{Name: processShim, PID: os.Getpid()}}
	src := m.source()
	if src != nil {
		procs = append(procs, src.HostProcesses()...)
	}
	for _, p := range procs {
		parent := os.Getpid()
		if p.Name == processShim {
			parent = 0
		}
		u, err := readProcUsage(m.procRoot, p.PID, parent)
		if err != nil {
			continue // gone meanwhile
		}
		ch <- prometheus.MustNewConstMetric(descRSS, prometheus.GaugeValue, float64(u.rssBytes), p.Name)
		ch <- prometheus.MustNewConstMetric(descPSS, prometheus.GaugeValue, float64(u.pssBytes), p.Name)
		ch <- prometheus.MustNewConstMetric(descCPU, prometheus.CounterValue, u.cpuSeconds, p.Name)
	}
	if src == nil {
		return
	}
	if v, ok := src.VsockStats(); ok {
		ch <- prometheus.MustNewConstMetric(descVsockB, prometheus.CounterValue, float64(v.BytesFromGuest), directionFromGuest)
		ch <- prometheus.MustNewConstMetric(descVsockB, prometheus.CounterValue, float64(v.BytesToGuest), directionToGuest)
		ch <- prometheus.MustNewConstMetric(descVsockR, prometheus.CounterValue, float64(v.ResetsSent))
		ch <- prometheus.MustNewConstMetric(descVsockC, prometheus.GaugeValue, float64(v.Connections))
		ch <- prometheus.MustNewConstMetric(descVsockRef, prometheus.CounterValue, float64(v.ConnectionsRefused))
		ch <- prometheus.MustNewConstMetric(descVsockCV, prometheus.CounterValue, float64(v.CreditViolations))
		ch <- prometheus.MustNewConstMetric(descVsockPD, prometheus.CounterValue, float64(v.PacketsDropped))
	}
	m.collectGuest(ch, src)
}

// collectGuest passes on the guest's metrics that pass parseGuestMetrics.
func (m *Sandbox) collectGuest(ch chan<- prometheus.Metric, src Source) {
	m.guestMu.Lock()
	defer m.guestMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), m.guestTimeout)
	defer cancel()
	text, err := src.GuestMetrics(ctx)
	if err != nil {
		return // a guest that does not answer has no guest series
	}
	samples, rejected, _ := parseGuestMetrics(text)
	total := m.guestRejected.Add(uint64(rejected))
	ch <- prometheus.MustNewConstMetric(descRejected, prometheus.CounterValue, float64(total))
	for _, s := range samples {
		vt := prometheus.GaugeValue
		if s.typ == counter {
			vt = prometheus.CounterValue
		}
		var labels []string
		if s.name == guestCPUSeconds {
			labels = []string{s.mode}
		}
		ch <- prometheus.MustNewConstMetric(guestDescs[s.name], vt, s.value, labels...)
	}
}

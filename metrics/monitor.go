package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Monitor gathers the metrics of every shim on the node and adds the
// node's own: what `kasa monitor` serves. It is a prometheus.Gatherer.
type Monitor struct {
	// StateRoot is where sandboxes keep their state, and shims their
	// metrics sockets (virtcontainers.SandboxStateRoot).
	StateRoot string
	// NodeRoot holds the node's counters (NodeRoot).
	NodeRoot string
	// ShimTimeout bounds each shim's whole answer; the shims are asked
	// in parallel, so it bounds the scrape too.
	ShimTimeout time.Duration
	// MaxAnswerBytes bounds a shim's answer.
	MaxAnswerBytes int64
	// ErrorLog, if set, is told what went wrong in a scrape (a shim that
	// did not answer, say); the scrape itself goes on.
	ErrorLog promhttp.Logger

	reg    *prometheus.Registry
	errors *prometheus.CounterVec
}

// Defaults of a Monitor.
const (
	DefaultShimTimeout    = 5 * time.Second
	DefaultMaxAnswerBytes = 4 << 20
	// maxParallelScrapes bounds the shims asked at once.
	maxParallelScrapes = 16
)

// NewMonitor returns a monitor of the shims under stateRoot.
func NewMonitor(stateRoot string) *Monitor {
	m := &Monitor{StateRoot: stateRoot, NodeRoot: NodeRoot, ShimTimeout: DefaultShimTimeout, MaxAnswerBytes: DefaultMaxAnswerBytes,
		reg: prometheus.NewRegistry(),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MonitorScrapeErrors,
			Help: "Shims that did not answer a scrape usably, by reason."}, []string{labelReason})}
	for _, r := range []string{ScrapeUnreachable, ScrapeTimeout, ScrapeBadAnswer} {
		m.errors.WithLabelValues(r)
	}
	m.reg.MustRegister(m.errors)
	return m
}

// Handler serves the monitor's metrics in the format the scraper asks for.
func (m *Monitor) Handler() http.Handler {
	return promhttp.HandlerFor(m, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError, ErrorLog: m.ErrorLog, MaxRequestsInFlight: 4})
}

// shimAnswer is one shim's part of a scrape.
type shimAnswer struct {
	id       string
	families []*dto.MetricFamily
	// reason is "" for a usable answer, else a ScrapeErrorReason.
	reason string
	err    error
}

// Gather asks every shim, then adds the node's metrics. A shim that does
// not answer usably within ShimTimeout is left out (kasa_monitor_shim_up
// 0): the others' metrics are served all the same.
func (m *Monitor) Gather() ([]*dto.MetricFamily, error) {
	ids, err := m.shimSockets()
	if err != nil {
		return nil, err
	}
	answers := m.scrapeShims(ids)
	gatherers := prometheus.Gatherers{m.reg}
	node := prometheus.NewRegistry()
	up := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: MonitorShimUp,
		Help: "1 if the sandbox's shim answered this scrape usably, else 0."}, []string{LabelSandboxID})
	running := 0
	var errs []error
	for _, a := range answers {
		if a.reason != "" {
			m.errors.WithLabelValues(a.reason).Inc()
			errs = append(errs, fmt.Errorf("shim of sandbox %s: %w", a.id, a.err))
		}
		if a.reason != ScrapeUnreachable {
			running++
		}
		if a.reason == "" {
			up.WithLabelValues(a.id).Set(1)
			fams := a.families
			gatherers = append(gatherers, prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) { return fams, nil }))
		} else {
			up.WithLabelValues(a.id).Set(0)
		}
	}
	runningG := prometheus.NewGauge(prometheus.GaugeOpts{Name: SandboxesRunning,
		Help: "Sandboxes whose shim serves metrics on this node."})
	runningG.Set(float64(running))
	node.MustRegister(up, runningG)
	starts, failures, cerr := nodeCounters(m.NodeRoot)
	if cerr != nil {
		errs = append(errs, cerr)
	} else {
		s := prometheus.NewCounterVec(prometheus.CounterOpts{Name: SandboxStarts,
			Help: "Sandbox starts that succeeded on this node since its boot, by how the VM started (cold or template)."}, []string{labelStart})
		for start, n := range starts {
			s.WithLabelValues(start).Add(float64(n))
		}
		f := prometheus.NewCounterVec(prometheus.CounterOpts{Name: SandboxStartFailures,
			Help: "Sandbox starts that failed on this node since its boot, by the step that failed."}, []string{labelReason})
		for _, r := range FailureReasons {
			f.WithLabelValues(r).Add(float64(failures[r]))
		}
		node.MustRegister(s, f)
	}
	gatherers = append(gatherers, node)
	mfs, gerr := gatherers.Gather()
	// What a shim did wrong is logged by the handler and counted; the
	// scrape itself goes on with the others.
	return mfs, errors.Join(append(errs, gerr)...)
}

// shimSockets lists the sandboxes under StateRoot that have a metrics
// socket, sorted.
func (m *Monitor) shimSockets() ([]string, error) {
	entries, err := os.ReadDir(m.StateRoot)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		if st, err := os.Lstat(SocketPath(m.StateRoot, e.Name())); err == nil && st.Mode()&os.ModeSocket != 0 {
			ids = append(ids, e.Name())
		}
	}
	sort.Strings(ids)
	return ids, nil
}

func (m *Monitor) scrapeShims(ids []string) []shimAnswer {
	answers := make([]shimAnswer, len(ids))
	sem := make(chan struct{}, maxParallelScrapes)
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			answers[i] = m.scrapeShim(id)
		}()
	}
	wg.Wait()
	return answers
}

// scrapeShim asks sandbox id's shim for its metrics and checks the
// answer: the text format, within MaxAnswerBytes, every family a kasa_
// one, every series of sandbox id.
func (m *Monitor) scrapeShim(id string) shimAnswer {
	a := shimAnswer{id: id}
	ctx, cancel := context.WithTimeout(context.Background(), m.ShimTimeout)
	defer cancel()
	sock := SocketPath(m.StateRoot, id)
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://shim"+Path, nil)
	if err != nil {
		a.reason, a.err = ScrapeBadAnswer, err
		return a
	}
	req.Header.Set("Accept", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
	resp, err := tr.RoundTrip(req)
	if err != nil {
		a.reason, a.err = classify(ctx, err), err
		return a
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, m.MaxAnswerBytes+1))
	switch {
	case err != nil:
		a.reason, a.err = classify(ctx, err), err
		return a
	case resp.StatusCode != http.StatusOK:
		a.reason, a.err = ScrapeBadAnswer, fmt.Errorf("HTTP %s", resp.Status)
		return a
	case int64(len(body)) > m.MaxAnswerBytes:
		a.reason, a.err = ScrapeBadAnswer, fmt.Errorf("answer larger than %d bytes", m.MaxAnswerBytes)
		return a
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	byName, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		a.reason, a.err = ScrapeBadAnswer, fmt.Errorf("not the Prometheus text format: %w", err)
		return a
	}
	for name, mf := range byName {
		if !strings.HasPrefix(name, "kasa_") {
			a.reason, a.err = ScrapeBadAnswer, fmt.Errorf("family %q is not a kasa_ one", name)
			return a
		}
		for _, metric := range mf.GetMetric() {
			if sandboxOf(metric) != id {
				a.reason, a.err = ScrapeBadAnswer, fmt.Errorf("family %s has a series of another sandbox", name)
				return a
			}
		}
		a.families = append(a.families, mf)
	}
	return a
}

// OfSandbox keeps, of families, the series of sandbox id.
func OfSandbox(families []*dto.MetricFamily, id string) []*dto.MetricFamily {
	var out []*dto.MetricFamily
	for _, mf := range families {
		var kept []*dto.Metric
		for _, m := range mf.GetMetric() {
			if sandboxOf(m) == id {
				kept = append(kept, m)
			}
		}
		if len(kept) > 0 {
			out = append(out, &dto.MetricFamily{Name: mf.Name, Help: mf.Help, Type: mf.Type, Unit: mf.Unit, Metric: kept})
		}
	}
	return out
}

func sandboxOf(m *dto.Metric) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == LabelSandboxID {
			return l.GetValue()
		}
	}
	return ""
}

// classify says why a scrape got no answer.
func classify(ctx context.Context, err error) string {
	var op *net.OpError
	switch {
	case ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded):
		return ScrapeTimeout
	case errors.As(err, &op) && op.Op == "dial":
		return ScrapeUnreachable
	default:
		return ScrapeBadAnswer
	}
}

package metrics

import (
	"fmt"
	"math"
	"slices"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/kasa-runtime/kasa/agent/api"
)

// guestSample is one value of the guest's metrics that passed the checks.
type guestSample struct {
	name string
	typ  familyType
	// mode is GuestCPUSeconds' label; "" for the other families.
	mode  string
	value float64
}

// maxGuestValue bounds a guest value: beyond it, no memory size or CPU
// time is real.
const maxGuestValue = 1 << 62

// parseGuestMetrics reads the agent's GetMetrics text, which the guest
// wrote and the host does not trust, and keeps only what the agent may
// send (agent/api/metrics.go): a listed family of the listed type, with no
// label or, for GuestCPUSeconds, one mode of api.GuestCPUModes, each at
// most once, with a finite value in [0, 2^62]. It returns what it kept and
// how many samples it dropped. Text that does not parse is dropped whole.
// No string of the guest's reaches a label or the log unchecked.
func parseGuestMetrics(text string) ([]guestSample, int, error) {
	if len(text) > api.MaxMetricsBytes {
		return nil, 1, fmt.Errorf("guest metrics: %d bytes, more than %d", len(text), api.MaxMetricsBytes)
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		// The parser's message quotes the guest's text: say only where.
		return nil, 1, fmt.Errorf("guest metrics: not the Prometheus text format")
	}
	var out []guestSample
	rejected := 0
	for name, mf := range families {
		typ, known := guestFamilies[name]
		if !known || !hasType(mf, typ) {
			rejected += max(len(mf.GetMetric()), 1)
			continue
		}
		seen := map[string]bool{}
		for _, m := range mf.GetMetric() {
			mode, ok := guestLabel(name, m.GetLabel())
			v := sampleValue(m, typ)
			if !ok || seen[mode] || math.IsNaN(v) || v < 0 || v > maxGuestValue {
				rejected++
				continue
			}
			seen[mode] = true
			out = append(out, guestSample{name: name, typ: typ, mode: mode, value: v})
		}
	}
	slices.SortFunc(out, func(a, b guestSample) int { return strings.Compare(a.name+" "+a.mode, b.name+" "+b.mode) })
	return out, rejected, nil
}

func hasType(mf *dto.MetricFamily, typ familyType) bool {
	switch typ {
	case counter:
		return mf.GetType() == dto.MetricType_COUNTER
	default:
		return mf.GetType() == dto.MetricType_GAUGE
	}
}

func sampleValue(m *dto.Metric, typ familyType) float64 {
	if typ == counter {
		if m.GetCounter() == nil {
			return math.NaN()
		}
		return m.GetCounter().GetValue()
	}
	if m.GetGauge() == nil {
		return math.NaN()
	}
	return m.GetGauge().GetValue()
}

// guestLabel checks a sample's labels: none, or for GuestCPUSeconds
// exactly the mode label with a known value, which it returns.
func guestLabel(name string, labels []*dto.LabelPair) (string, bool) {
	if name != api.GuestCPUSeconds {
		return "", len(labels) == 0
	}
	if len(labels) != 1 || labels[0].GetName() != api.GuestCPUModeLabel {
		return "", false
	}
	mode := labels[0].GetValue()
	return mode, slices.Contains(api.GuestCPUModes, mode)
}

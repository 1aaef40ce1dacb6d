// Package metricstest reads values out of gathered or parsed Prometheus
// families, for tests of Kasa's metrics.
package metricstest

import (
	"strings"

	dto "github.com/prometheus/client_model/go"
)

// Value is the value of the first series of name whose labels include
// labels: a counter's or gauge's value, or for name+"_count" and
// name+"_sum" a histogram's count and sum.
func Value(families []*dto.MetricFamily, name string, labels map[string]string) (float64, bool) {
	for _, mf := range families {
		family, part := mf.GetName(), ""
		if mf.GetType() == dto.MetricType_HISTOGRAM {
			for _, suffix := range []string{"_count", "_sum"} {
				if strings.HasSuffix(name, suffix) && strings.TrimSuffix(name, suffix) == family {
					part = suffix
				}
			}
			if part != "" {
				family = name
			}
		}
		if family != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !HasLabels(m, labels) {
				continue
			}
			switch {
			case part == "_count":
				return float64(m.GetHistogram().GetSampleCount()), true
			case part == "_sum":
				return m.GetHistogram().GetSampleSum(), true
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue(), true
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue(), true
			}
		}
	}
	return 0, false
}

// HasLabels reports whether m carries every label of want with its value.
func HasLabels(m *dto.Metric, want map[string]string) bool {
	found := 0
	for _, l := range m.GetLabel() {
		if v, ok := want[l.GetName()]; ok {
			if v != l.GetValue() {
				return false
			}
			found++
		}
	}
	return found == len(want)
}

// Families lists the families of a parsed text (expfmt's map).
func Families(byName map[string]*dto.MetricFamily) []*dto.MetricFamily {
	out := make([]*dto.MetricFamily, 0, len(byName))
	for _, mf := range byName {
		out = append(out, mf)
	}
	return out
}

//go:build integration

package integration

import (
	"slices"
	"testing"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/metrics"
	"github.com/kasa-runtime/kasa/metrics/metricstest"
	"github.com/kasa-runtime/kasa/virtcontainers"
)

// assertMetricsUnforged scrapes the metrics of sandbox id, whose hostile
// guest answers GetMetrics with a flood and with forgeries in turn
// (test/hostile/guest): the shim answers every scrape, passes on none of
// the forgeries and counts them as rejected.
func assertMetricsUnforged(t *testing.T, id string) {
	t.Helper()
	mon := metrics.NewMonitor(virtcontainers.SandboxStateRoot)
	mon.NodeRoot = t.TempDir() // the node's counters are not under test
	own := map[string]string{metrics.LabelSandboxID: id}
	for i := range 4 {
		// Other sandboxes of the host may fail their scrape: only id's counts.
		mfs, _ := mon.Gather()
		if up, _ := metricstest.Value(mfs, metrics.MonitorShimUp, own); up != 1 {
			t.Errorf("scrape %d: the hostile sandbox's shim is not up", i)
		}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				if !metricstest.HasLabels(m, own) {
					continue
				}
				if mf.GetName() == "kasa_forged_total" || mf.GetName() == api.GuestMemoryTotalBytes {
					t.Errorf("scrape %d: the guest's forged %s was served", i, mf.GetName())
				}
				for _, l := range m.GetLabel() {
					if l.GetName() == api.GuestCPUModeLabel && !slices.Contains(api.GuestCPUModes, l.GetValue()) {
						t.Errorf("scrape %d: the guest's made-up CPU mode %q was served", i, l.GetValue())
					}
				}
			}
		}
		if i == 3 {
			rejected, _ := metricstest.Value(mfs, metrics.GuestMetricsRejected, own)
			t.Logf("hostile guest metrics: %v samples rejected over 2 forged answers (2 floods refused whole)", rejected)
			if rejected < 2 {
				t.Errorf("%s = %v, want the forgeries counted", metrics.GuestMetricsRejected, rejected)
			}
		}
	}
}

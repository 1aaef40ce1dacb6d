package server

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/kasa-runtime/kasa/agent/api"
)

// TestGetMetrics: the guest's figures come from its /proc, in the
// families, types and labels agent/api/metrics.go lists.
func TestGetMetrics(t *testing.T) {
	proc := t.TempDir()
	os.MkdirAll(filepath.Join(proc, "self"), 0o755)
	os.WriteFile(filepath.Join(proc, "meminfo"), []byte("MemTotal:        2000 kB\nMemFree:          500 kB\nMemAvailable:    1500 kB\n"), 0o644)
	os.WriteFile(filepath.Join(proc, "stat"), []byte("cpu  100 0 50 1000 5 0 2 0 0 0\ncpu0 100 0 50 1000 5 0 2 0 0 0\n"), 0o644)
	os.WriteFile(filepath.Join(proc, "self/statm"), []byte("5000 300 100 10 0 200 0\n"), 0o644)
	s := New(func(string) {})
	s.procRoot = proc
	resp, err := s.GetMetrics(context.Background(), &api.GetMetricsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	text := resp.GetPrometheusText()
	if len(text) > api.MaxMetricsBytes {
		t.Errorf("%d bytes, more than %d", len(text), api.MaxMetricsBytes)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("%v in:\n%s", err, text)
	}
	gauge := func(name string) float64 {
		mf := mfs[name]
		if mf.GetType() != dto.MetricType_GAUGE || len(mf.GetMetric()) != 1 || len(mf.GetMetric()[0].GetLabel()) != 0 {
			t.Errorf("%s: %v", name, mf)
			return 0
		}
		return mf.GetMetric()[0].GetGauge().GetValue()
	}
	if v := gauge(api.GuestMemoryTotalBytes); v != 2000*1024 {
		t.Errorf("total %v", v)
	}
	if v := gauge(api.GuestMemoryAvailableBytes); v != 1500*1024 {
		t.Errorf("available %v", v)
	}
	if v := gauge(api.GuestMemoryFreeBytes); v != 500*1024 {
		t.Errorf("free %v", v)
	}
	if v := gauge(api.GuestAgentRSSBytes); v != float64(300*os.Getpagesize()) {
		t.Errorf("agent RSS %v", v)
	}
	if v := gauge(api.GuestCPUsOnline); v < 1 {
		t.Errorf("CPUs %v", v)
	}
	cpu := mfs[api.GuestCPUSeconds]
	if cpu.GetType() != dto.MetricType_COUNTER || len(cpu.GetMetric()) != len(api.GuestCPUModes) {
		t.Fatalf("cpu: %v", cpu)
	}
	for _, m := range cpu.GetMetric() {
		l := m.GetLabel()
		if len(l) != 1 || l[0].GetName() != api.GuestCPUModeLabel {
			t.Errorf("cpu labels %v", l)
		}
		if l[0].GetValue() == "user" && m.GetCounter().GetValue() != 1 || l[0].GetValue() == "idle" && m.GetCounter().GetValue() != 10 {
			t.Errorf("cpu %s = %v", l[0].GetValue(), m.GetCounter().GetValue())
		}
	}
	if len(mfs) != 6 {
		t.Errorf("%d families, want the 6 listed", len(mfs))
	}
}

package server

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/kasa-runtime/kasa/agent/api"
)

// userHZ is the unit of /proc/stat's times: USER_HZ, 100 on every Linux
// architecture the guest runs.
const userHZ = 100

// GetMetrics reports the guest's memory, CPU time and the agent's own
// memory as the families agent/api/metrics.go lists, in the Prometheus text
// format.
func (s *Service) GetMetrics(ctx context.Context, _ *api.GetMetricsRequest) (*api.GetMetricsResponse, error) {
	mem, err := s.meminfo()
	if err != nil {
		return nil, fmt.Errorf("meminfo: %w", err)
	}
	var families []*dto.MetricFamily
	gauge := func(name, help string, v float64) {
		families = append(families, &dto.MetricFamily{Name: proto.String(name), Help: proto.String(help), Type: dto.MetricType_GAUGE.Enum(),
			Metric: []*dto.Metric{{Gauge: &dto.Gauge{Value: proto.Float64(v)}}}})
	}
	gauge(api.GuestMemoryTotalBytes, "Guest memory the kernel manages (MemTotal).", float64(mem["MemTotal"]))
	gauge(api.GuestMemoryAvailableBytes, "Guest memory available to new work (MemAvailable).", float64(mem["MemAvailable"]))
	gauge(api.GuestMemoryFreeBytes, "Guest memory unused (MemFree).", float64(mem["MemFree"]))
	var cpus unix.CPUSet
	if err := unix.SchedGetaffinity(0, &cpus); err == nil {
		gauge(api.GuestCPUsOnline, "Guest CPUs online.", float64(cpus.Count()))
	}
	if rss, err := s.agentRSS(); err == nil {
		gauge(api.GuestAgentRSSBytes, "Resident memory of the agent (PID 1 of the guest).", float64(rss))
	}
	if times, err := s.cpuTimes(); err == nil {
		mf := &dto.MetricFamily{Name: proto.String(api.GuestCPUSeconds), Help: proto.String("Guest CPU time by mode, summed over its CPUs."),
			Type: dto.MetricType_COUNTER.Enum()}
		for i, mode := range api.GuestCPUModes {
			if i < len(times) {
				mf.Metric = append(mf.Metric, &dto.Metric{
					Label:   []*dto.LabelPair{{Name: proto.String(api.GuestCPUModeLabel), Value: proto.String(mode)}},
					Counter: &dto.Counter{Value: proto.Float64(float64(times[i]) / userHZ)},
				})
			}
		}
		families = append(families, mf)
	}
	var b bytes.Buffer
	for _, mf := range families {
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			return nil, fmt.Errorf("encode %s: %w", mf.GetName(), err)
		}
	}
	return &api.GetMetricsResponse{PrometheusText: b.String()}, nil
}

// cpuTimes returns the aggregate "cpu" line of /proc/stat, in USER_HZ.
func (s *Service) cpuTimes() ([]uint64, error) {
	b, err := os.ReadFile(filepath.Join(s.procRoot, "stat"))
	if err != nil {
		return nil, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 2 || f[0] != "cpu" {
		return nil, fmt.Errorf("/proc/stat: no cpu line")
	}
	var out []uint64
	for _, s := range f[1:] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("/proc/stat: %q: %w", s, err)
		}
		out = append(out, v)
	}
	return out, nil
}

// agentRSS is the agent's resident memory, from /proc/self/statm.
func (s *Service) agentRSS() (uint64, error) {
	b, err := os.ReadFile(filepath.Join(s.procRoot, "self/statm"))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, fmt.Errorf("/proc/self/statm: %q", b)
	}
	pages, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return 0, err
	}
	return pages * uint64(os.Getpagesize()), nil
}

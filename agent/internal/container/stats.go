package container

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/containerd/containerd/errdefs"
	"github.com/opencontainers/cgroups"

	"github.com/kasa-runtime/kasa/agent/api"
)

// cgroupStats turns libcontainer's cgroup statistics into the API's.
// memoryEvents are the cgroup's memory.events counters (nil if unknown).
func cgroupStats(s *cgroups.Stats, memoryEvents map[string]uint64) *api.CgroupStats {
	if s == nil {
		return &api.CgroupStats{}
	}
	out := &api.CgroupStats{
		Cpu: &api.CPUStats{
			UsageTotalNsec:  s.CpuStats.CpuUsage.TotalUsage,
			UsageUserNsec:   s.CpuStats.CpuUsage.UsageInUsermode,
			UsageKernelNsec: s.CpuStats.CpuUsage.UsageInKernelmode,
			PerCpuUsageNsec: s.CpuStats.CpuUsage.PercpuUsage,
			Throttling: &api.ThrottlingStats{
				Periods:           s.CpuStats.ThrottlingData.Periods,
				ThrottledPeriods:  s.CpuStats.ThrottlingData.ThrottledPeriods,
				ThrottledTimeNsec: s.CpuStats.ThrottlingData.ThrottledTime,
			},
		},
		Pids: &api.PidsStats{Current: s.PidsStats.Current, Limit: s.PidsStats.Limit},
	}
	m := s.MemoryStats
	mem := &api.MemoryStats{
		UsageBytes:        m.Usage.Usage,
		MaxUsageBytes:     m.Usage.MaxUsage,
		LimitBytes:        noLimitZero(m.Usage.Limit),
		CacheBytes:        m.Stats["file"],
		RssBytes:          m.Stats["anon"],
		InactiveFileBytes: m.Stats["inactive_file"],
		SwapUsageBytes:    m.SwapOnlyUsage.Usage,
		SwapLimitBytes:    noLimitZero(m.SwapOnlyUsage.Limit),
		Stat:              m.Stats,
	}
	if memoryEvents != nil {
		mem.Events = &api.MemoryEvents{
			Low: memoryEvents["low"], High: memoryEvents["high"], Max: memoryEvents["max"],
			Oom: memoryEvents["oom"], OomKill: memoryEvents["oom_kill"],
		}
		mem.OomKillCount = memoryEvents["oom_kill"]
	}
	out.Memory = mem

	blk := &api.BlkioStats{}
	for _, e := range s.BlkioStats.IoServiceBytesRecursive {
		switch e.Op {
		case "Read":
			blk.ReadBytes += e.Value
		case "Write":
			blk.WriteBytes += e.Value
		}
	}
	for _, e := range s.BlkioStats.IoServicedRecursive {
		switch e.Op {
		case "Read":
			blk.ReadIos += e.Value
		case "Write":
			blk.WriteIos += e.Value
		}
	}
	out.Blkio = blk

	sizes := make([]string, 0, len(s.HugetlbStats))
	for size := range s.HugetlbStats {
		sizes = append(sizes, size)
	}
	sort.Strings(sizes)
	for _, size := range sizes {
		h := s.HugetlbStats[size]
		out.Hugetlb = append(out.Hugetlb, &api.HugetlbStats{PageSize: size, UsageBytes: h.Usage, MaxUsageBytes: h.MaxUsage, Failcnt: h.Failcnt})
	}
	return out
}

// noLimitZero maps cgroup2's "max" (read as MaxUint64) to the API's 0.
func noLimitZero(v uint64) uint64 {
	if v == math.MaxUint64 {
		return 0
	}
	return v
}

// readKeyValues reads a flat-keyed cgroup file such as memory.events.
func readKeyValues(path string) (map[string]uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64); err == nil {
			out[k] = n
		}
	}
	return out, sc.Err()
}

// networkStats reads the counters of every interface under
// sysRoot/class/net but lo.
func networkStats(sysRoot string) []*api.NetworkInterfaceStats {
	dirs, _ := filepath.Glob(filepath.Join(sysRoot, "class/net/*"))
	var out []*api.NetworkInterfaceStats
	for _, d := range dirs {
		name := filepath.Base(d)
		if name == "lo" {
			continue
		}
		c := func(counter string) uint64 {
			b, err := os.ReadFile(filepath.Join(d, "statistics", counter))
			if err != nil {
				return 0
			}
			v, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
			return v
		}
		out = append(out, &api.NetworkInterfaceStats{
			Name:    name,
			RxBytes: c("rx_bytes"), RxPackets: c("rx_packets"), RxErrors: c("rx_errors"), RxDropped: c("rx_dropped"),
			TxBytes: c("tx_bytes"), TxPackets: c("tx_packets"), TxErrors: c("tx_errors"), TxDropped: c("tx_dropped"),
		})
	}
	return out
}

// applyUpdate changes r as UpdateContainer asks: unset fields stay, as in
// `runc update`. Errors wrap errdefs.ErrInvalidArgument.
func applyUpdate(r *cgroups.Resources, u *api.LinuxResources) error {
	if u == nil {
		return fmt.Errorf("resources are required: %w", errdefs.ErrInvalidArgument)
	}
	if m := u.GetMemory(); m != nil {
		oldLimit := r.Memory
		if m.Limit != nil {
			if *m.Limit < -1 || *m.Limit == 0 {
				return fmt.Errorf("memory limit %d: want bytes > 0, or -1 for none: %w", *m.Limit, errdefs.ErrInvalidArgument)
			}
			r.Memory = *m.Limit
		}
		if m.Reservation != nil {
			r.MemoryReservation = *m.Reservation
		}
		switch {
		case m.Swap != nil:
			r.MemorySwap = *m.Swap
		case m.Limit != nil && r.MemorySwap > 0 && (r.MemorySwap == oldLimit || r.Memory == -1 || r.MemorySwap < r.Memory):
			// Keep memory+swap consistent with the new limit: a container
			// without swap stays without swap.
			r.MemorySwap = r.Memory
		}
		if _, err := cgroups.ConvertMemorySwapToCgroupV2Value(r.MemorySwap, r.Memory); err != nil {
			return fmt.Errorf("memory: %w: %w", err, errdefs.ErrInvalidArgument)
		}
	}
	if c := u.GetCpu(); c != nil {
		if c.Shares != nil {
			r.CpuShares = *c.Shares
			r.CpuWeight = cgroups.ConvertCPUSharesToCgroupV2Value(*c.Shares)
		}
		if c.Quota != nil {
			r.CpuQuota = *c.Quota
		}
		if c.Period != nil {
			r.CpuPeriod = *c.Period
		}
		if c.Cpus != "" {
			r.CpusetCpus = c.Cpus
		}
		if c.Mems != "" {
			r.CpusetMems = c.Mems
		}
	}
	if p := u.GetPids(); p != nil && p.Limit != nil {
		limit := *p.Limit
		if limit == 0 {
			limit = -1 // the API's "no limit"
		}
		r.PidsLimit = &limit
	}
	return nil
}

package container

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/containerd/errdefs"
	"github.com/opencontainers/cgroups"
	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/agent/api"
)

func TestCgroupStats(t *testing.T) {
	s := cgroups.NewStats()
	s.CpuStats.CpuUsage.TotalUsage = 3000
	s.CpuStats.CpuUsage.UsageInUsermode = 2000
	s.CpuStats.ThrottlingData.ThrottledPeriods = 4
	s.MemoryStats.Usage = cgroups.MemoryData{Usage: 10 << 20, MaxUsage: 12 << 20, Limit: math.MaxUint64}
	s.MemoryStats.SwapOnlyUsage = cgroups.MemoryData{Limit: 1 << 20}
	s.MemoryStats.Stats = map[string]uint64{"file": 1, "anon": 2, "inactive_file": 3}
	s.PidsStats = cgroups.PidsStats{Current: 2, Limit: 50}
	s.BlkioStats.IoServiceBytesRecursive = []cgroups.BlkioStatEntry{{Op: "Read", Value: 5}, {Op: "Write", Value: 6}, {Op: "Read", Value: 1}}
	s.BlkioStats.IoServicedRecursive = []cgroups.BlkioStatEntry{{Op: "Write", Value: 9}}
	s.HugetlbStats["2MB"] = cgroups.HugetlbStats{Usage: 7}

	out := cgroupStats(s, map[string]uint64{"oom": 2, "oom_kill": 1, "max": 3})
	m := out.GetMemory()
	switch {
	case out.GetCpu().GetUsageTotalNsec() != 3000 || out.GetCpu().GetUsageUserNsec() != 2000 || out.GetCpu().GetThrottling().GetThrottledPeriods() != 4:
		t.Errorf("cpu %v", out.GetCpu())
	case m.GetUsageBytes() != 10<<20 || m.GetMaxUsageBytes() != 12<<20 || m.GetLimitBytes() != 0 || m.GetSwapLimitBytes() != 1<<20:
		t.Errorf("memory usage/limits %v", m)
	case m.GetCacheBytes() != 1 || m.GetRssBytes() != 2 || m.GetInactiveFileBytes() != 3 || len(m.GetStat()) != 3:
		t.Errorf("memory.stat figures %v", m)
	case m.GetOomKillCount() != 1 || m.GetEvents().GetOom() != 2 || m.GetEvents().GetMax() != 3:
		t.Errorf("memory events %v", m)
	case out.GetPids().GetCurrent() != 2 || out.GetPids().GetLimit() != 50:
		t.Errorf("pids %v", out.GetPids())
	case out.GetBlkio().GetReadBytes() != 6 || out.GetBlkio().GetWriteBytes() != 6 || out.GetBlkio().GetWriteIos() != 9:
		t.Errorf("blkio %v", out.GetBlkio())
	case len(out.GetHugetlb()) != 1 || out.GetHugetlb()[0].GetPageSize() != "2MB" || out.GetHugetlb()[0].GetUsageBytes() != 7:
		t.Errorf("hugetlb %v", out.GetHugetlb())
	}
}

func TestApplyUpdate(t *testing.T) {
	i64 := func(v int64) *int64 { return &v }
	u64 := func(v uint64) *uint64 { return &v }

	// Without swap (memory+swap == memory), a new limit keeps it that way.
	r := &cgroups.Resources{Memory: 64 << 20, MemorySwap: 64 << 20, CpuQuota: 50000, CpuPeriod: 100000}
	err := applyUpdate(r, &api.LinuxResources{
		Memory: &api.LinuxMemory{Limit: i64(128 << 20)},
		Cpu:    &api.LinuxCPU{Shares: u64(512), Quota: i64(20000), Cpus: "0"},
		Pids:   &api.LinuxPids{Limit: i64(0)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if r.Memory != 128<<20 || r.MemorySwap != 128<<20 {
		t.Errorf("memory %d swap %d", r.Memory, r.MemorySwap)
	}
	if r.CpuShares != 512 || r.CpuWeight == 0 || r.CpuQuota != 20000 || r.CpuPeriod != 100000 || r.CpusetCpus != "0" {
		t.Errorf("cpu %+v", r)
	}
	if r.PidsLimit == nil || *r.PidsLimit != -1 {
		t.Errorf("pids limit 0 should mean none (-1), got %v", r.PidsLimit)
	}

	// Unset fields stay.
	r = &cgroups.Resources{Memory: 64 << 20, CpusetMems: "0"}
	if err := applyUpdate(r, &api.LinuxResources{Cpu: &api.LinuxCPU{}}); err != nil || r.Memory != 64<<20 || r.CpusetMems != "0" {
		t.Errorf("empty update changed %+v (%v)", r, err)
	}

	for name, u := range map[string]*api.LinuxResources{
		"nil":              nil,
		"zero limit":       {Memory: &api.LinuxMemory{Limit: i64(0)}},
		"swap below limit": {Memory: &api.LinuxMemory{Limit: i64(64 << 20), Swap: i64(32 << 20)}},
	} {
		if err := applyUpdate(&cgroups.Resources{}, u); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
}

func TestMemoryEventsFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "memory.events")
	os.WriteFile(path, []byte("low 0\nhigh 1\nmax 2\noom 3\noom_kill 4\noom_group_kill 0\n"), 0o644)
	kv, err := readKeyValues(path)
	if err != nil || kv["oom_kill"] != 4 || kv["max"] != 2 {
		t.Fatalf("readKeyValues: %v %v", kv, err)
	}
	if n, err := readOOMKills(path); err != nil || n != 4 {
		t.Fatalf("readOOMKills: %d %v", n, err)
	}
}

// The watcher reports one event per increment of oom_kill, also for one
// that lands just before it is stopped.
func TestOOMWatcher(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "memory.events")
	write := func(kills int) {
		t.Helper()
		// In place, as the kernel does: inotify sees IN_MODIFY.
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString("oom 0\noom_kill " + string(rune('0'+kills)) + "\n")
		f.Close()
	}
	write(1) // a kill from before the watch is not reported
	q := newOOMQueue()
	w, err := watchOOM(dir, func() { q.push("c1") })
	if err != nil {
		t.Fatal(err)
	}
	write(3)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i := 0; i < 2; i++ {
		if id, err := q.next(ctx); err != nil || id != "c1" {
			t.Fatalf("event %d: %q %v", i, id, err)
		}
	}
	// A kill right before stop is counted once, by the watch or by stop.
	write(4)
	w.stop()
	if id, err := q.next(ctx); err != nil || id != "c1" {
		t.Fatalf("last event: %q %v", id, err)
	}
	short, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if id, err := q.next(short); err == nil {
		t.Fatalf("unexpected extra event %q", id)
	}
}

func TestOOMQueueDropsOldest(t *testing.T) {
	q := newOOMQueue()
	for i := 0; i < oomQueueLimit+5; i++ {
		q.push(string(rune('a' + i%26)))
	}
	if len(q.ids) != oomQueueLimit {
		t.Fatalf("queue holds %d", len(q.ids))
	}
}

func TestExitCode(t *testing.T) {
	// Exit status 3 is 3<<8; death by SIGKILL is 9.
	if got := exitCode(unix.WaitStatus(3 << 8)); got != 3 {
		t.Errorf("exit 3 → %d", got)
	}
	if got := exitCode(unix.WaitStatus(9)); got != 137 {
		t.Errorf("SIGKILL → %d, want 137", got)
	}
}

//go:build integration

package integration

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kasa-runtime/kasa/test/ctrtest"
)

// A long-lived pod probed by exec (as a liveness probe does, here as fast as
// an exec completes, at most every 100 ms) keeps the guest's memory and its
// shim's memory flat: neither side keeps anything per finished exec. The
// soak lasts $KASA_SOAK (default 2m; `make soak` runs 10m) and prints its
// figures; it fails when memory grows by more than a fixed slack plus 2 KiB
// per exec (a leak of a record per exec, as there was, costs about 20 KiB).
func TestCRIExecSoak(t *testing.T) {
	d := 2 * time.Minute
	if v := os.Getenv("KASA_SOAK"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatalf("KASA_SOAK=%q: %v", v, err)
		}
	}
	c, ctx := startCRIHarness(t, d+4*time.Minute, nil)
	podCfg := ctrtest.PodConfig("soak")
	podID := runPod(t, ctx, c, podCfg)
	id := startContainer(t, ctx, c, podID, podCfg, containerConfig("probed", ctrtest.BusyboxImage, []string{"sleep", "86400"}))
	shims := pidsWithCmdline("-id " + podID)
	if len(shims) != 1 {
		t.Fatalf("the pod's shim: %v", shims)
	}
	shim := shims[0]

	// Guest memory in use (MemTotal - MemAvailable, the guest kernel's own
	// view; the container shares it) and the shim's RSS, median of 5.
	sample := func() (guestKiB, shimKiB int64) {
		var g, s []int64
		for range 5 {
			out := crictl(t, ctx, c, "exec", id, "cat", "/proc/meminfo")
			g = append(g, meminfo(out, "MemTotal")-meminfo(out, "MemAvailable"))
			s = append(s, statusKiB(shim, "VmRSS"))
		}
		slices.Sort(g)
		slices.Sort(s)
		return g[2], s[2]
	}

	// Warm up first: the first execs fault in code and caches on both sides.
	for range 20 {
		crictl(t, ctx, c, "exec", id, "true")
	}
	g0, s0 := sample()
	start := time.Now()
	n := 0
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for time.Since(start) < d {
		<-tick.C
		if res, err := c.Crictl(ctx, "exec", id, "true"); err != nil || res.ExitCode != 0 {
			t.Fatalf("exec %d: %v %v", n, res, err)
		}
		n++
	}
	elapsed := time.Since(start)
	g1, s1 := sample()
	report := fmt.Sprintf("%d execs in %s (%.1f/s): guest memory in use %d → %d KiB (%+d), shim RSS %d → %d KiB (%+d)",
		n, elapsed.Round(time.Second), float64(n)/elapsed.Seconds(), g0, g1, g1-g0, s0, s1, s1-s0)
	t.Log(report)
	fmt.Println("soak:", report)

	slack := int64(4096) + 2*int64(n)
	if g1-g0 > slack {
		t.Errorf("the guest's memory grew by %d KiB over %d execs (allowed %d)", g1-g0, n, slack)
	}
	if s1-s0 > slack {
		t.Errorf("the shim's RSS grew by %d KiB over %d execs (allowed %d)", s1-s0, n, slack)
	}
	crictl(t, ctx, c, "stopp", podID)
	crictl(t, ctx, c, "rmp", podID)
	ctrtest.AssertNoLeftovers(t, c, podID, id)
}

// meminfo reads one "Key: N kB" line of /proc/meminfo text.
func meminfo(text, key string) int64 {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// statusKiB reads one "Key: N kB" line of /proc/<pid>/status.
func statusKiB(pid int, key string) int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	return meminfo(string(b), key)
}

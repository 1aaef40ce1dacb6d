package metrics

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// procUsage is what the host spends on one process.
type procUsage struct {
	rssBytes, pssBytes uint64
	cpuSeconds         float64
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times.
const clockTicks = 100

// readProcUsage reads pid's RSS and PSS (smaps_rollup) and CPU time
// (stat) under procRoot. With parent > 0 it checks that pid is still
// parent's child, so that a pid reaped and reused meanwhile is not read.
func readProcUsage(procRoot string, pid, parent int) (procUsage, error) {
	var u procUsage
	stat, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "stat"))
	if err != nil {
		return u, err
	}
	// The command name, in parentheses, may hold spaces and parentheses:
	// the fields that follow start after the last ')'.
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 {
		return u, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(stat[i+1:]))
	// f[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
	if len(f) < 13 {
		return u, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	if ppid, err := strconv.Atoi(f[1]); err != nil || parent > 0 && ppid != parent {
		return u, fmt.Errorf("process %d is no longer a child of %d", pid, parent)
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return u, fmt.Errorf("/proc/%d/stat: bad CPU times", pid)
	}
	u.cpuSeconds = float64(utime+stime) / clockTicks
	sm, err := os.Open(filepath.Join(procRoot, strconv.Itoa(pid), "smaps_rollup"))
	if err != nil {
		return u, err
	}
	defer sm.Close()
	sc := bufio.NewScanner(sm)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		var dst *uint64
		switch k {
		case "Rss":
			dst = &u.rssBytes
		case "Pss":
			dst = &u.pssBytes
		default:
			continue
		}
		fields := strings.Fields(v)
		if len(fields) != 2 || fields[1] != "kB" {
			return u, fmt.Errorf("/proc/%d/smaps_rollup: %s: %q", pid, k, v)
		}
		n, err := strconv.ParseUint(fields[0], 10, 64)
		if err != nil {
			return u, fmt.Errorf("/proc/%d/smaps_rollup: %s: %w", pid, k, err)
		}
		*dst = n * 1024
	}
	return u, sc.Err()
}

// Package procmem reads what a process costs the host in memory, for the
// benchmarks.
package procmem

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// SmapsRollup returns the Pss* lines of /proc/PID/smaps_rollup, in KiB,
// keyed by name without the colon ("Pss", "Pss_Anon", ...); empty if the
// process is gone.
func SmapsRollup(pid int) map[string]int64 {
	out := map[string]int64{}
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && strings.HasPrefix(f[0], "Pss") {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			out[strings.TrimSuffix(f[0], ":")] = v
		}
	}
	return out
}

// MemfdKiB is what the memfds a process holds open contain, in KiB (for a
// QEMU: its guest RAM), mapped or not.
func MemfdKiB(pid int) int64 {
	fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
	var total int64
	seen := map[uint64]bool{} // a memfd open twice is one memfd
	for _, fd := range fds {
		var st syscall.Stat_t
		if l, _ := os.Readlink(fd); strings.HasPrefix(l, "/memfd:") && syscall.Stat(fd, &st) == nil && !seen[st.Ino] {
			seen[st.Ino] = true
			total += st.Blocks * 512 >> 10
		}
	}
	return total
}

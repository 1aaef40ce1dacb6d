package qemu

import (
	"sync"
	"time"
)

// Under TCG the guest's TSC is the host's TSC (QEMU reads it with rdtsc), but
// the guest cannot learn its rate from CPUID or kvmclock and has to
// calibrate it against the PIT. Under TCG that measurement is noisy enough
// to fail on a busy host: on microvm, which has no HPET or ACPI PM timer to
// fall back on, the kernel then marks the TSC unusable and hangs early in
// boot (about one boot in three on a 2-core host running a build). Telling
// the kernel the rate (tsc_early_khz=) makes every machine type boot
// deterministically.

// tscSample is how long hostTSCkHz measures: the error is about 10 µs of
// scheduling noise over this, i.e. under 0.05 %.
const tscSample = 25 * time.Millisecond

var (
	tscOnce sync.Once
	tscKHz  uint64
)

// hostTSCkHz measures the host TSC's rate once per process; 0 if unknown.
func hostTSCkHz() uint64 {
	tscOnce.Do(func() {
		if !haveTSC {
			return
		}
		t0, c0 := tscPoint()
		time.Sleep(tscSample)
		t1, c1 := tscPoint()
		if us := t1.Sub(t0).Microseconds(); us > 0 && c1 > c0 {
			tscKHz = (c1 - c0) * 1000 / uint64(us)
		}
	})
	return tscKHz
}

// tscPoint pairs a TSC reading with a clock reading taken around it, retrying
// when the thread was preempted in between.
func tscPoint() (time.Time, uint64) {
	var best time.Duration = -1
	var at time.Time
	var tsc uint64
	for range 8 {
		a := time.Now()
		c := rdtsc()
		b := time.Now()
		if d := b.Sub(a); best < 0 || d < best {
			best, at, tsc = d, a.Add(d/2), c
		}
		if best < 2*time.Microsecond {
			break
		}
	}
	return at, tsc
}

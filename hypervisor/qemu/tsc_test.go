package qemu

import (
	"os"
	"regexp"
	"strconv"
	"testing"
)

func TestHostTSCkHz(t *testing.T) {
	if !haveTSC {
		t.Skip("no TSC on this architecture")
	}
	khz := hostTSCkHz()
	if khz < 100_000 || khz > 10_000_000 {
		t.Fatalf("host TSC measured at %d kHz: implausible", khz)
	}
	// Where the host kernel states its TSC rate (a VM host with a known
	// frequency: cpu MHz is then the TSC's), the measurement must agree.
	b, _ := os.ReadFile("/proc/cpuinfo")
	if regexp.MustCompile(`(?m)^flags\s*:.*\btsc_known_freq\b`).Match(b) {
		if m := regexp.MustCompile(`(?m)^cpu MHz\s*:\s*([0-9.]+)`).FindSubmatch(b); m != nil {
			mhz, _ := strconv.ParseFloat(string(m[1]), 64)
			if diff := float64(khz)/1000/mhz - 1; diff > 0.002 || diff < -0.002 {
				t.Errorf("measured %d kHz, the kernel says %.3f MHz", khz, mhz)
			}
		}
	}
	t.Logf("host TSC: %d kHz", khz)
}

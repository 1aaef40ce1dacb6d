package virtcontainers

import (
	"runtime"
	"strings"
	"testing"

	"github.com/kasa-runtime/kasa/configuration"
)

func TestBootSlotCount(t *testing.T) {
	cfg := configuration.Default()
	if n, why := BootSlotCount(cfg, false); n != max(runtime.NumCPU(), 1) || !strings.Contains(why, "TCG") {
		t.Errorf("default under TCG: %d (%s), want the CPU count", n, why)
	}
	if n, why := BootSlotCount(cfg, true); n != 4*runtime.NumCPU() || !strings.Contains(why, "KVM") {
		t.Errorf("default under KVM: %d (%s), want 4 per CPU", n, why)
	}
	cfg.Runtime.MaxConcurrentBoots = 7
	if n, why := BootSlotCount(cfg, false); n != 7 || why != "runtime.max_concurrent_boots" {
		t.Errorf("configured 7: %d (%s)", n, why)
	}
}

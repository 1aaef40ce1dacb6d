package virtcontainers

import (
	"strings"
	"testing"
)

func TestKernelModules(t *testing.T) {
	got := kernelModules([]string{"e1000e InterruptThrottleRate=3000,3000 EEE=1", "i915", "  "})
	if len(got) != 2 || got[0].GetName() != "e1000e" || strings.Join(got[0].GetParameters(), " ") != "InterruptThrottleRate=3000,3000 EEE=1" ||
		got[1].GetName() != "i915" || len(got[1].GetParameters()) != 0 {
		t.Errorf("kernelModules = %v", got)
	}
}

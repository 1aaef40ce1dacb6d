package virtcontainers

import (
	"strings"
	"testing"

	"github.com/kasa-runtime/kasa/configuration"
)

func TestSizeForPod(t *testing.T) {
	base := configuration.Default()
	base.Hypervisor.DefaultVCPUs, base.Hypervisor.DefaultMemory, base.Hypervisor.DefaultMaxVCPUs = 1, 512, 4
	for _, tc := range []struct {
		name       string
		ann        map[string]string
		vcpus, mem int
	}{
		{"no annotations: the defaults", nil, 1, 512},
		{"1.5 CPUs and 256 MiB", map[string]string{AnnSandboxCPUQuota: "150000", AnnSandboxCPUPeriod: "100000", AnnSandboxMemory: "268435456"}, 3, 768},
		{"no CPU limit (quota -1)", map[string]string{AnnSandboxCPUQuota: "-1", AnnSandboxCPUPeriod: "100000"}, 1, 512},
		{"capped at default_maxvcpus", map[string]string{AnnSandboxCPUQuota: "1600000", AnnSandboxCPUPeriod: "100000"}, 4, 512},
		{"memory rounded up to MiB", map[string]string{AnnSandboxMemory: "1"}, 1, 513},
	} {
		got, err := SizeForPod(base, tc.ann)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got.Hypervisor.DefaultVCPUs != tc.vcpus || got.Hypervisor.DefaultMemory != tc.mem {
			t.Errorf("%s: %d vCPUs %d MiB, want %d and %d", tc.name, got.Hypervisor.DefaultVCPUs, got.Hypervisor.DefaultMemory, tc.vcpus, tc.mem)
		}
	}
	if base.Hypervisor.DefaultVCPUs != 1 || base.Hypervisor.DefaultMemory != 512 {
		t.Error("input configuration modified")
	}
	if _, err := SizeForPod(base, map[string]string{AnnSandboxMemory: "lots"}); err == nil || !strings.Contains(err.Error(), AnnSandboxMemory) {
		t.Errorf("bad value: %v", err)
	}
}

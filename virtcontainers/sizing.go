package virtcontainers

import (
	"fmt"
	"strconv"

	"github.com/kasa-runtime/kasa/configuration"
)

// Sandbox sizing annotations containerd's CRI plugin sets on a pod's sandbox
// container: the sum of the pod's container limits.
const (
	AnnSandboxCPUPeriod = "io.kubernetes.cri.sandbox-cpu-period"
	AnnSandboxCPUQuota  = "io.kubernetes.cri.sandbox-cpu-quota"
	AnnSandboxMemory    = "io.kubernetes.cri.sandbox-memory"
)

// SizeForPod returns a copy of cfg whose VM has the configured default vCPUs
// and memory plus what the pod's limits ask for, as Kata does: the defaults
// are the guest's own overhead. Without sizing annotations cfg is returned
// unchanged. vCPUs are capped at the configured maximum.
func SizeForPod(cfg *configuration.Config, ann map[string]string) (*configuration.Config, error) {
	quota, err := annotationInt(ann, AnnSandboxCPUQuota)
	if err != nil {
		return nil, err
	}
	period, err := annotationInt(ann, AnnSandboxCPUPeriod)
	if err != nil {
		return nil, err
	}
	mem, err := annotationInt(ann, AnnSandboxMemory)
	if err != nil {
		return nil, err
	}
	out := cfg.Clone()
	if quota > 0 && period > 0 {
		limit := out.Hypervisor.MaxVCPUs()
		out.Hypervisor.DefaultVCPUs = min(out.Hypervisor.DefaultVCPUs+int((quota+period-1)/period), limit)
	}
	if mem > 0 {
		out.Hypervisor.DefaultMemory += int((mem + 1<<20 - 1) >> 20)
	}
	if err := out.Validate(); err != nil {
		return nil, fmt.Errorf("sizing the VM from the pod's limits: %w", err)
	}
	return out, nil
}

// annotationInt parses an integer annotation; absent is 0, negative
// (containerd's "no limit" is -1 for quota) counts as 0.
func annotationInt(ann map[string]string, key string) (int64, error) {
	v, ok := ann[key]
	if !ok || v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("pod annotation %s = %q: not an integer", key, v)
	}
	if n < 0 {
		return 0, nil
	}
	return n, nil
}

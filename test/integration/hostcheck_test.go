//go:build integration

package integration

import (
	"context"
	"testing"

	"github.com/kasa-runtime/kasa/virtcontainers/hostcheck"
)

// kasa check's probes on this machine with the test's guest image: every
// requirement met (TCG may be a warning), and a missing kernel is a failure
// with a remedy.
func TestHostCheck(t *testing.T) {
	cfg := testConfig(t)
	results := hostcheck.Run(context.Background(), cfg)
	for _, r := range results {
		t.Logf("%-5s %-16s %s", r.Status, r.Name, r.Detail)
	}
	if hostcheck.Failed(results) {
		t.Fatal("host check failed on the test machine")
	}

	cfg.Hypervisor.Kernel = "/nonexistent/vmlinuz"
	results = hostcheck.Run(context.Background(), cfg)
	var kernel *hostcheck.Result
	for i := range results {
		if results[i].Name == "guest kernel" {
			kernel = &results[i]
		}
	}
	if kernel == nil || kernel.Status != hostcheck.Fail || kernel.Remedy == "" || !hostcheck.Failed(results) {
		t.Fatalf("missing kernel: %+v", kernel)
	}
}

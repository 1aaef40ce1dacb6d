package shimv2

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/kasa-runtime/kasa/metrics"
	"github.com/kasa-runtime/kasa/metrics/metricstest"
	"github.com/kasa-runtime/kasa/virtcontainers"
)

var value = metricstest.Value

// TestShimMetricsLifecycle: the shim serves its sandbox's metrics on the
// sandbox's socket once the sandbox runs, the node counts the start, and
// the socket goes with the sandbox.
func TestShimMetricsLifecycle(t *testing.T) {
	f := newFakeShim(t)
	ctx := context.Background()
	const pod = "podm"
	if _, err := f.s.Create(ctx, &taskAPI.CreateTaskRequest{ID: pod, Bundle: f.bundle(t, pod, pod, true)}); err != nil {
		t.Fatal(err)
	}
	sock := metrics.SocketPath(virtcontainers.SandboxStateRoot, pod)
	if st, err := os.Stat(sock); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("metrics socket: %v, %v", st, err)
	}
	mon := metrics.NewMonitor(virtcontainers.SandboxStateRoot)
	mon.NodeRoot = metrics.NodeRoot
	mfs, err := mon.Gather()
	if err != nil {
		t.Fatal(err)
	}
	id := map[string]string{metrics.LabelSandboxID: pod}
	if v, ok := value(mfs, metrics.MonitorShimUp, id); !ok || v != 1 {
		t.Errorf("shim up = %v, %v", v, ok)
	}
	if v, ok := value(mfs, metrics.HostProcessRSSBytes, map[string]string{metrics.LabelSandboxID: pod, "process": "shim"}); !ok || v <= 0 {
		t.Errorf("shim RSS = %v, %v", v, ok)
	}
	// One start, of whichever kind: the stand-in has no VM to say how it
	// started.
	var starts float64
	for _, s := range append(metrics.StartLabels, metrics.StartUnknown) {
		v, _ := value(mfs, metrics.SandboxStarts, map[string]string{"start": s})
		starts += v
	}
	if starts != 1 {
		t.Errorf("starts = %v, want 1", starts)
	}
	// A created sandbox container that is killed stops the sandbox.
	if _, err := f.s.Kill(ctx, &taskAPI.KillRequest{ID: pod, Signal: uint32(syscall.SIGKILL)}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("metrics socket left after the sandbox stopped: %v", err)
	}
	if _, err := f.s.Delete(ctx, &taskAPI.DeleteRequest{ID: pod}); err != nil {
		t.Fatal(err)
	}
	mfs, _ = mon.Gather()
	if _, ok := value(mfs, metrics.MonitorShimUp, id); ok {
		t.Error("the stopped sandbox's shim is still gathered")
	}
	if v, ok := value(mfs, metrics.ContainerExits, id); ok {
		t.Errorf("series of the stopped sandbox: exits %v", v)
	}
}

// TestShimCountsFailedStart: a start refused for its configuration is
// counted under "config", with no socket left.
func TestShimCountsFailedStart(t *testing.T) {
	f := newFakeShim(t)
	const pod = "podbad"
	dir := f.bundle(t, pod, pod, true)
	b, _ := os.ReadFile(filepath.Join(dir, "config.json"))
	var spec specs.Spec
	json.Unmarshal(b, &spec)
	spec.Annotations["io.katacontainers.config.hypervisor.default_memory"] = "lots"
	b, _ = json.Marshal(spec)
	os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644)
	if _, err := f.s.Create(context.Background(), &taskAPI.CreateTaskRequest{ID: pod, Bundle: dir}); err == nil {
		t.Fatal("a pod with default_memory=lots started")
	}
	mon := metrics.NewMonitor(virtcontainers.SandboxStateRoot)
	mon.NodeRoot = metrics.NodeRoot
	mfs, err := mon.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := value(mfs, metrics.SandboxStartFailures, map[string]string{"reason": metrics.ReasonConfig}); v != 1 {
		t.Errorf("config failures = %v, want 1", v)
	}
	if v, _ := value(mfs, metrics.SandboxStarts, nil); v != 0 {
		t.Errorf("starts = %v, want 0", v)
	}
	if _, err := os.Lstat(metrics.SocketPath(virtcontainers.SandboxStateRoot, pod)); !os.IsNotExist(err) {
		t.Errorf("metrics socket of a failed start: %v", err)
	}
}

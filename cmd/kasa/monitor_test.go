package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kasa-runtime/kasa/metrics"
	"github.com/kasa-runtime/kasa/virtcontainers"
)

// TestMetricsCommand: kasa metrics prints the node's and the shims'
// series, or one sandbox's, from the shims' sockets.
func TestMetricsCommand(t *testing.T) {
	dir := t.TempDir()
	oldRoot, oldNode := virtcontainers.SandboxStateRoot, metrics.NodeRoot
	virtcontainers.SandboxStateRoot, metrics.NodeRoot = filepath.Join(dir, "sbs"), filepath.Join(dir, "node")
	defer func() { virtcontainers.SandboxStateRoot, metrics.NodeRoot = oldRoot, oldNode }()
	os.MkdirAll(filepath.Join(virtcontainers.SandboxStateRoot, "sb1"), 0o700)
	m := metrics.NewSandbox(metrics.PodLabels{SandboxID: "sb1", PodName: "web"})
	m.ContainerOOM()
	srv, err := metrics.Serve(metrics.SocketPath(virtcontainers.SandboxStateRoot, "sb1"), m.Registry())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if err := metrics.RecordStart(virtcontainers.VMStartTemplate); err != nil {
		t.Fatal(err)
	}

	var out, errb bytes.Buffer
	if code := run([]string{"metrics"}, &out, &errb); code != 0 || !strings.Contains(out.String(), `kasa_container_oom_events_total{pod_name="web",sandbox_id="sb1"} 1`) ||
		!strings.Contains(out.String(), `kasa_sandbox_starts_total{start="template"} 1`) || !strings.Contains(out.String(), `kasa_sandbox_starts_total{start="cold"} 0`) {
		t.Errorf("kasa metrics: %d\n%s%s", code, out.String(), errb.String())
	}
	out.Reset()
	if code := run([]string{"metrics", "sb1"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "kasa_container_oom_events_total") ||
		strings.Contains(out.String(), "kasa_sandbox_starts_total") {
		t.Errorf("kasa metrics sb1: %d\n%s", code, out.String())
	}
	errb.Reset()
	if code := run([]string{"metrics", "nosuch"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "sandbox nosuch: no metrics") {
		t.Errorf("kasa metrics nosuch: %d %s", code, errb.String())
	}
	if code := run([]string{"metrics", "a", "b"}, &out, &errb); code != 2 {
		t.Errorf("kasa metrics a b: %d", code)
	}
}

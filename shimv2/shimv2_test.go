package shimv2

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/events"
	"github.com/containerd/containerd/pkg/shutdown"

	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/kasa-runtime/kasa/agent/api"
)

func TestSandboxGrouping(t *testing.T) {
	for _, tc := range []struct {
		name        string
		ann         map[string]string
		wantSandbox string
		isSandbox   bool
	}{
		{"ctr container: its own VM", nil, "c1", true},
		{"CRI sandbox", map[string]string{annCRIContainerType: "sandbox", annCRISandboxID: "c1"}, "c1", true},
		{"CRI workload", map[string]string{annCRIContainerType: "container", annCRISandboxID: "pod1"}, "pod1", false},
		{"CRI-O workload", map[string]string{annCRIOContainerTyp: "container", annCRIOSandboxID: "pod2"}, "pod2", false},
	} {
		s := &specs.Spec{Annotations: tc.ann}
		if got := sandboxIDOf("c1", s); got != tc.wantSandbox {
			t.Errorf("%s: sandbox = %q, want %q", tc.name, got, tc.wantSandbox)
		}
		if got := isSandboxContainer("c1", s); got != tc.isSandbox {
			t.Errorf("%s: isSandbox = %v", tc.name, got)
		}
	}
}

func TestProcessTransitions(t *testing.T) {
	p := newProcess(context.Background(), "c", "c", stdioPaths{})
	if err := p.transition(task.Status_PAUSED); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("created -> paused: %v", err)
	}
	for _, to := range []task.Status{task.Status_RUNNING, task.Status_PAUSED, task.Status_RUNNING} {
		if err := p.transition(to); err != nil {
			t.Fatal(err)
		}
	}
	if !p.setExited(3, time.Unix(5, 0)) || p.setExited(4, time.Now()) {
		t.Fatal("exit must be recorded exactly once")
	}
	select {
	case <-p.exited:
	default:
		t.Fatal("exited not closed")
	}
	if st, code, _ := p.snapshot(); st != task.Status_STOPPED || code != 3 {
		t.Fatalf("state %v code %d", st, code)
	}
	if err := p.transition(task.Status_RUNNING); err == nil {
		t.Fatal("stopped -> running allowed")
	}
}

func TestCgroupMetrics(t *testing.T) {
	m := cgroupMetrics(&api.CgroupStats{
		Cpu:    &api.CPUStats{UsageTotalNsec: 5000, Throttling: &api.ThrottlingStats{Periods: 2}},
		Memory: &api.MemoryStats{UsageBytes: 100, LimitBytes: 200, Events: &api.MemoryEvents{OomKill: 1}},
		Pids:   &api.PidsStats{Current: 3},
	})
	if m.CPU.UsageUsec != 5 || m.CPU.NrPeriods != 2 || m.Memory.Usage != 100 || m.Memory.UsageLimit != 200 || m.MemoryEvents.OomKill != 1 || m.Pids.Current != 3 {
		t.Fatalf("metrics = %+v", m)
	}
	if empty := cgroupMetrics(nil); empty.CPU != nil || empty.Memory != nil {
		t.Fatalf("nil stats gave %+v", empty)
	}
}

func TestPrintVersion(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{[]string{"--version"}, true},
		{[]string{"-v"}, true},
		{[]string{"-version"}, true},
		{[]string{"-namespace", "k8s.io", "-id", "c1", "start"}, false},
		{[]string{"-id", "x", "--", "--version"}, false},
		{nil, false},
	} {
		var b strings.Builder
		got := PrintVersion("/usr/bin/containerd-shim-kasa-v2", tc.args, &b)
		if _, handled := OwnCommand(append([]string{"/usr/bin/containerd-shim-kasa-v2"}, tc.args...), io.Discard); handled != got {
			t.Errorf("%v: OwnCommand handled = %v", tc.args, handled)
		}
		if got != tc.want {
			t.Errorf("%v: answered %v", tc.args, got)
		}
		if got && (!strings.HasPrefix(b.String(), "containerd-shim-kasa-v2 (Kasa) version ") || !strings.Contains(b.String(), RuntimeType)) {
			t.Errorf("%v: %q", tc.args, b.String())
		}
	}
}

// Without an event sink (CRI-O's empty TTRPC_ADDRESS) events are dropped,
// and neither block the service nor survive its shutdown.
func TestNoEventSink(t *testing.T) {
	ctx, sd := shutdown.WithShutdown(context.Background())
	pub := &closeRecorder{closed: make(chan struct{})}
	s := newService(ctx, pub, true, sd)
	for i := 0; i < 1000; i++ { // more than the channel holds
		s.publish("/tasks/exit", &eventstypes.TaskExit{ContainerID: "c"})
	}
	sd.Shutdown()
	<-sd.Done()
	s.publish("/tasks/exit", &eventstypes.TaskExit{ContainerID: "c"}) // after shutdown: dropped
	select {
	case <-pub.closed: // the shim library waits for it at exit
	case <-time.After(5 * time.Second):
		t.Fatal("the publisher was not closed")
	}
	if pub.published != 0 {
		t.Errorf("%d events published without a sink", pub.published)
	}
}

type closeRecorder struct {
	published int
	closed    chan struct{}
}

func (r *closeRecorder) Publish(context.Context, string, events.Event) error {
	r.published++
	return nil
}
func (r *closeRecorder) Close() error { close(r.closed); return nil }

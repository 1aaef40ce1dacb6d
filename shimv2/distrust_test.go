package shimv2

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/events"
	"github.com/containerd/containerd/pkg/shutdown"
	"github.com/containerd/containerd/protobuf"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kasa-runtime/kasa/agent/agenttest"
	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/agent/client"
	"github.com/kasa-runtime/kasa/configuration"
	"github.com/kasa-runtime/kasa/metrics"
	"github.com/kasa-runtime/kasa/virtcontainers"
)

// bound is how long a shim call may take against a silent agent: generous,
// for loaded machines; without the fixes these calls never return at all.
const bound = 60 * time.Second

// shortTimeouts keep the tests quick; the behaviour is the same with the
// defaults.
var shortTimeouts = client.Timeouts{Call: time.Second, Start: time.Second, Signal: time.Second}

type recorder struct {
	mu     sync.Mutex
	events []events.Event
}

func (r *recorder) Publish(_ context.Context, _ string, e events.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
	return nil
}

func (r *recorder) Close() error { return nil }

func (r *recorder) ooms() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.events {
		if o, ok := e.(*eventstypes.TaskOOM); ok {
			out = append(out, o.ContainerID)
		}
	}
	return out
}

// fakeShim is a service whose sandboxes are stand-in VMs with the agent a.
type fakeShim struct {
	s      *service
	a      *agenttest.Agent
	events *recorder
	dir    string
}

func newFakeShim(t *testing.T) *fakeShim {
	t.Helper()
	dir := t.TempDir()
	oldRoot, oldCreate, oldNode := virtcontainers.SandboxStateRoot, createSandbox, metrics.NodeRoot
	virtcontainers.SandboxStateRoot = filepath.Join(dir, "sbs")
	metrics.NodeRoot = filepath.Join(dir, "node-metrics")
	conf := filepath.Join(dir, "configuration.toml")
	if err := os.WriteFile(conf, []byte("[hypervisor.qemu]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv(configuration.EnvConfigFile, conf)
	a := agenttest.Start(t)
	// The processes run until the test ends; OOM events as the test says.
	a.Handle("WaitProcess", func(ctx context.Context, _ proto.Message) (proto.Message, error) {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-a.Done():
			return nil, context.Canceled
		}
	})
	a.Handle("GetOOMEvent", func(ctx context.Context, _ proto.Message) (proto.Message, error) {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-a.Done():
			return nil, context.Canceled
		}
	})
	oldReaper, oldReap := startReaper, reapOrphans
	startReaper = func(string) (*os.File, error) { return nil, nil }
	reapOrphans = func(context.Context) ([]string, error) { return nil, nil }
	t.Cleanup(func() { startReaper, reapOrphans = oldReaper, oldReap })
	createSandbox = func(ctx context.Context, sc virtcontainers.SandboxConfig) (*virtcontainers.Sandbox, error) {
		return virtcontainers.SandboxWithAgentForTest(ctx, sc.ID, dir, shortTimeouts, newStandInVM(a.Dial))
	}
	ctx, cancel := context.WithCancel(context.Background())
	ctx, sd := shutdown.WithShutdown(ctx)
	rec := &recorder{}
	s := newService(ctx, rec, false, sd)
	t.Cleanup(func() {
		// Stop the sandbox left, unless the service lock is stuck (the
		// failure TestBootHoldsNoLock looks for): then fail, not hang.
		locked := make(chan struct{})
		go func() { s.mu.Lock(); close(locked) }()
		select {
		case <-locked:
			sb := s.sandbox
			s.mu.Unlock()
			if sb != nil {
				sb.Stop(context.Background())
			}
		case <-time.After(bound):
			t.Errorf("the service lock is still held at the end of the test")
		}
		sd.Shutdown()
		cancel()
		virtcontainers.SandboxStateRoot, createSandbox, metrics.NodeRoot = oldRoot, oldCreate, oldNode
	})
	return &fakeShim{s: s, a: a, events: rec, dir: dir}
}

// bundle writes a CRI bundle for container id of pod; sandbox says
// whether it is the pod's sandbox container.
func (f *fakeShim) bundle(t *testing.T, id, pod string, sandbox bool) string {
	t.Helper()
	typ := "container"
	if sandbox {
		typ = "sandbox"
	}
	spec := specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{Args: []string{"/pause"}, Cwd: "/"},
		Root:    &specs.Root{Path: "rootfs"},
		Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{
			{Type: specs.NetworkNamespace}, {Type: specs.IPCNamespace}, {Type: specs.PIDNamespace},
			{Type: specs.UTSNamespace}, {Type: specs.MountNamespace}}},
		Annotations: map[string]string{annCRIContainerType: typ, annCRISandboxID: pod},
	}
	b, _ := json.Marshal(spec)
	dir := filepath.Join(f.dir, "bundles", id)
	if err := os.MkdirAll(filepath.Join(dir, "rootfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// within runs f and fails the test if it has not returned within bound.
func within[T any](t *testing.T, what string, f func() (T, error)) (T, error) {
	t.Helper()
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() { v, err := f(); done <- result{v, err} }()
	select {
	case r := <-done:
		return r.v, r.err
	case <-time.After(bound):
		t.Fatalf("%s did not return within %s", what, bound)
		panic("unreachable")
	}
}

func (f *fakeShim) startPod(t *testing.T, pod string) {
	t.Helper()
	ctx := context.Background()
	if _, err := f.s.Create(ctx, &taskAPI.CreateTaskRequest{ID: pod, Bundle: f.bundle(t, pod, pod, true)}); err != nil {
		t.Fatalf("create %s: %v", pod, err)
	}
	if _, err := f.s.Start(ctx, &taskAPI.StartRequest{ID: pod}); err != nil {
		t.Fatalf("start %s: %v", pod, err)
	}
}

// An agent that stops answering holds neither Kill, State nor Delete: the
// sandbox's SIGKILL stops the VM, its processes exit as killed, and the
// sandbox is removed.
func TestSilentAgentDoesNotWedgeShim(t *testing.T) {
	f := newFakeShim(t)
	ctx := context.Background()
	const pod = "pod1"
	f.startPod(t, pod)
	f.a.SetSilent(true)

	st, err := within(t, "State", func() (*taskAPI.StateResponse, error) {
		return f.s.State(ctx, &taskAPI.StateRequest{ID: pod})
	})
	if err != nil || st.Status != task.Status_RUNNING {
		t.Fatalf("State against a silent agent: %v, %v", st, err)
	}
	// (A SIGTERM of the pod's sandbox container is sent as SIGKILL.)
	if _, err := within(t, "Kill SIGUSR1", func() (any, error) {
		return f.s.Kill(ctx, &taskAPI.KillRequest{ID: pod, Signal: uint32(syscall.SIGUSR1)})
	}); err == nil {
		t.Errorf("SIGUSR1 through a silent agent reported success")
	}
	if _, err := within(t, "Kill SIGKILL", func() (any, error) {
		return f.s.Kill(ctx, &taskAPI.KillRequest{ID: pod, Signal: uint32(syscall.SIGKILL)})
	}); err != nil {
		t.Fatalf("SIGKILL of the sandbox through a silent agent: %v", err)
	}
	w, err := within(t, "Wait", func() (*taskAPI.WaitResponse, error) {
		wctx, cancel := context.WithTimeout(ctx, bound)
		defer cancel()
		return f.s.Wait(wctx, &taskAPI.WaitRequest{ID: pod})
	})
	if err != nil || w.ExitStatus != 128+uint32(syscall.SIGKILL) {
		t.Fatalf("Wait after SIGKILL: %v, %v; want exit 137", w, err)
	}
	if _, err := within(t, "Delete", func() (*taskAPI.DeleteResponse, error) {
		return f.s.Delete(ctx, &taskAPI.DeleteRequest{ID: pod})
	}); err != nil {
		t.Fatalf("Delete against a silent agent: %v", err)
	}
	if _, err := os.Stat(filepath.Join(virtcontainers.SandboxStateRoot, pod)); !os.IsNotExist(err) {
		t.Errorf("sandbox state left behind: %v", err)
	}
	if _, err := f.s.State(ctx, &taskAPI.StateRequest{ID: pod}); !errdefs.IsNotFound(errdefs.FromGRPC(err)) {
		t.Errorf("State after Delete: %v, want NotFound", err)
	}
}

// The service lock is not held across a VM's boot: State, Kill and Delete
// of other tasks and of the booting one answer while it boots, and Kill or
// Delete of the booting container cancel the boot.
func TestBootHoldsNoLock(t *testing.T) {
	for _, cancelBy := range []string{"Kill", "Delete"} {
		t.Run(cancelBy, func(t *testing.T) {
			f := newFakeShim(t)
			ctx := context.Background()
			booting := make(chan struct{})
			// A boot that waits for an agent that never answers, as long
			// as it is let.
			createSandbox = func(ctx context.Context, sc virtcontainers.SandboxConfig) (*virtcontainers.Sandbox, error) {
				close(booting)
				<-ctx.Done()
				return nil, ctx.Err()
			}
			created := make(chan error, 1)
			go func() {
				_, err := f.s.Create(ctx, &taskAPI.CreateTaskRequest{ID: "pod2", Bundle: f.bundle(t, "pod2", "pod2", true)})
				created <- err
			}()
			select {
			case <-booting:
			case err := <-created:
				t.Fatalf("Create ended before its boot: %v", err)
			}
			for _, id := range []string{"other", "pod2"} {
				if _, err := within(t, "State during boot", func() (*taskAPI.StateResponse, error) {
					return f.s.State(ctx, &taskAPI.StateRequest{ID: id})
				}); !errdefs.IsNotFound(errdefs.FromGRPC(err)) {
					t.Errorf("State of %s during boot: %v, want NotFound", id, err)
				}
			}
			if _, err := within(t, "Kill of another task during boot", func() (any, error) {
				return f.s.Kill(ctx, &taskAPI.KillRequest{ID: "other", Signal: 9})
			}); !errdefs.IsNotFound(errdefs.FromGRPC(err)) {
				t.Errorf("Kill of another task during boot: %v, want NotFound", err)
			}
			if cancelBy == "Kill" {
				if _, err := within(t, "Kill of the booting task", func() (any, error) {
					return f.s.Kill(ctx, &taskAPI.KillRequest{ID: "pod2", Signal: 9})
				}); err != nil {
					t.Errorf("Kill of the booting task: %v", err)
				}
			} else {
				if _, err := within(t, "Delete of the booting task", func() (*taskAPI.DeleteResponse, error) {
					return f.s.Delete(ctx, &taskAPI.DeleteRequest{ID: "pod2"})
				}); !errdefs.IsNotFound(errdefs.FromGRPC(err)) {
					t.Errorf("Delete of the booting task: %v, want NotFound (it never was created)", err)
				}
			}
			if _, err := within(t, "the cancelled Create", func() (any, error) { return nil, <-created }); err == nil {
				t.Fatal("Create succeeded although its boot was cancelled")
			}
			// The shim is usable again: a new boot works.
			oldReaper := startReaper
			startReaper = func(string) (*os.File, error) { return nil, nil }
			t.Cleanup(func() { startReaper = oldReaper })
			createSandbox = func(ctx context.Context, sc virtcontainers.SandboxConfig) (*virtcontainers.Sandbox, error) {
				return virtcontainers.SandboxWithAgentForTest(ctx, sc.ID, f.dir, shortTimeouts, newStandInVM(f.a.Dial))
			}
			f.startPod(t, "pod3")
		})
	}
}

// OOM events name containers as the guest says: only this sandbox's own
// reach containerd.
func TestOOMEventsOfOtherContainersAreDropped(t *testing.T) {
	f := newFakeShim(t)
	ids := make(chan string, 8)
	for _, id := range []string{"other-pod-container", "", "pod4"} {
		ids <- id
	}
	f.a.Handle("GetOOMEvent", func(ctx context.Context, _ proto.Message) (proto.Message, error) {
		select {
		case id := <-ids:
			return &api.GetOOMEventResponse{ContainerId: id}, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-f.a.Done():
			return nil, context.Canceled
		}
	})
	f.startPod(t, "pod4")
	deadline := time.Now().Add(bound)
	for len(f.events.ooms()) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := f.events.ooms(); len(got) != 1 || got[0] != "pod4" {
		t.Fatalf("OOM events published: %q, want only pod4", got)
	}
}

// The Delete of an exec makes the agent forget it: neither side's records
// grow with every exec.
func TestExecDeleteRemovesAgentRecord(t *testing.T) {
	f := newFakeShim(t)
	ctx := context.Background()
	f.a.Handle("WaitProcess", func(ctx context.Context, req proto.Message) (proto.Message, error) {
		if req.(*api.WaitProcessRequest).GetExecId() != "" {
			return &api.WaitProcessResponse{ExitStatus: 3, ExitedAt: timestamppb.Now()}, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-f.a.Done():
			return nil, context.Canceled
		}
	})
	f.startPod(t, "pod5")
	spec, err := typeurl.MarshalAny(&specs.Process{Args: []string{"true"}, Cwd: "/"})
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	for i := 0; i < n; i++ {
		id := "exec" + string(rune('a'+i))
		if _, err := f.s.Exec(ctx, &taskAPI.ExecProcessRequest{ID: "pod5", ExecID: id, Spec: protobuf.FromAny(spec)}); err != nil {
			t.Fatal(err)
		}
		if _, err := f.s.Start(ctx, &taskAPI.StartRequest{ID: "pod5", ExecID: id}); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, bound)
		w, err := f.s.Wait(wctx, &taskAPI.WaitRequest{ID: "pod5", ExecID: id})
		cancel()
		if err != nil || w.ExitStatus != 3 {
			t.Fatalf("wait %s: %v, %v", id, w, err)
		}
		if _, err := f.s.Delete(ctx, &taskAPI.DeleteRequest{ID: "pod5", ExecID: id}); err != nil {
			t.Fatal(err)
		}
		if got := f.a.Calls("RemoveProcess"); got != i+1 {
			t.Fatalf("after %d exec deletes the agent was asked to forget %d", i+1, got)
		}
	}
	c, _ := f.s.get("pod5")
	if len(c.all()) != 1 {
		t.Errorf("shim still holds %d processes of pod5, want its init only", len(c.all()))
	}
}

// The memory of deleted containers and the warning pace are bounded,
// whatever the pod's life or the guest's rate.
func TestRecentIDsAndRateLimit(t *testing.T) {
	var r recentIDs
	now := time.Now()
	for i := 0; i < 1000; i++ {
		r.add(string(rune('a'+i%26))+time.Duration(i).String(), now)
	}
	r.add("last", now)
	if !r.has("last", now) || r.has("last", now.Add(removedFor+time.Second)) || r.has("", now) {
		t.Errorf("recentIDs: last %v, expired %v", r.has("last", now), r.has("last", now.Add(removedFor+time.Second)))
	}
	if r.has("a0s", now) {
		t.Errorf("recentIDs kept an id %d additions ago", 1001)
	}
	var l rateLimit
	if ok, _ := l.allow(now); !ok {
		t.Fatal("first warning held back")
	}
	for i := 0; i < 100; i++ {
		if ok, _ := l.allow(now.Add(time.Duration(i) * time.Millisecond)); ok {
			t.Fatal("warning let through within the pace")
		}
	}
	if ok, dropped := l.allow(now.Add(unknownIDWarnEvery)); !ok || dropped != 100 {
		t.Errorf("next warning: %v, %d dropped; want true, 100", ok, dropped)
	}
}

// The exit of the sandbox container's init stops the VM before the exit is
// reported: CRI-O's StopPodSandbox only kills the sandbox container (its
// Delete comes at RemovePodSandbox), and a stopped pod must hold no VM.
func TestSandboxExitStopsVM(t *testing.T) {
	f := newFakeShim(t)
	ctx := context.Background()
	killed := make(chan struct{})
	var once sync.Once
	var got uint32
	f.a.Handle("SignalProcess", func(ctx context.Context, req proto.Message) (proto.Message, error) {
		once.Do(func() { got = req.(*api.SignalProcessRequest).GetSignal(); close(killed) })
		return &emptypb.Empty{}, nil
	})
	f.a.Handle("WaitProcess", func(ctx context.Context, _ proto.Message) (proto.Message, error) {
		select {
		case <-killed:
			return &api.WaitProcessResponse{ExitStatus: 128 + int32(syscall.SIGKILL), ExitedAt: timestamppb.Now()}, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-f.a.Done():
			return nil, context.Canceled
		}
	})
	const pod = "pod6"
	f.startPod(t, pod)
	f.s.mu.Lock()
	sb := f.s.sandbox
	f.s.mu.Unlock()
	// SIGTERM, as CRI-O's StopPodSandbox sends: the pause gets SIGKILL,
	// which it cannot miss while it starts.
	if _, err := f.s.Kill(ctx, &taskAPI.KillRequest{ID: pod, Signal: uint32(syscall.SIGTERM)}); err != nil {
		t.Fatal(err)
	}
	w, err := within(t, "Wait", func() (*taskAPI.WaitResponse, error) {
		wctx, cancel := context.WithTimeout(ctx, bound)
		defer cancel()
		return f.s.Wait(wctx, &taskAPI.WaitRequest{ID: pod})
	})
	if err != nil || w.ExitStatus != 128+uint32(syscall.SIGKILL) {
		t.Fatalf("Wait: %v, %v; want the guest's 137", w, err)
	}
	if got != uint32(syscall.SIGKILL) {
		t.Errorf("the sandbox's pause got signal %d for a SIGTERM, want SIGKILL", got)
	}
	select {
	case <-sb.Done():
	default:
		t.Fatal("the sandbox container exited and its VM still runs")
	}
	if _, err := os.Stat(filepath.Join(virtcontainers.SandboxStateRoot, pod)); !os.IsNotExist(err) {
		t.Errorf("sandbox state left after the sandbox container exited: %v", err)
	}
	st, err := f.s.State(ctx, &taskAPI.StateRequest{ID: pod})
	if err != nil || st.Status != task.Status_STOPPED || st.ExitStatus != 128+uint32(syscall.SIGKILL) {
		t.Errorf("State of the stopped sandbox: %v, %v", st, err)
	}
	if _, err := f.s.Delete(ctx, &taskAPI.DeleteRequest{ID: pod}); err != nil {
		t.Fatalf("Delete after the VM stopped: %v", err)
	}
	if _, err := os.Stat(filepath.Join(virtcontainers.SandboxStateRoot, pod)); !os.IsNotExist(err) {
		t.Errorf("sandbox state back after Delete: %v", err)
	}
}

// A container killed before it started ends by the signal, as runc's
// created init does: CRI-O stops a created container with Kill and Wait.
// For the sandbox container that also stops the VM.
func TestKillOfCreatedContainer(t *testing.T) {
	f := newFakeShim(t)
	ctx := context.Background()
	const pod = "pod7"
	if _, err := f.s.Create(ctx, &taskAPI.CreateTaskRequest{ID: pod, Bundle: f.bundle(t, pod, pod, true)}); err != nil {
		t.Fatal(err)
	}
	f.s.mu.Lock()
	sb := f.s.sandbox
	f.s.mu.Unlock()
	if _, err := f.s.Kill(ctx, &taskAPI.KillRequest{ID: pod, Signal: uint32(syscall.SIGTERM)}); err != nil {
		t.Fatal(err)
	}
	w, err := within(t, "Wait", func() (*taskAPI.WaitResponse, error) {
		wctx, cancel := context.WithTimeout(ctx, bound)
		defer cancel()
		return f.s.Wait(wctx, &taskAPI.WaitRequest{ID: pod})
	})
	// The pod's sandbox container gets SIGKILL for any ending signal.
	if err != nil || w.ExitStatus != 128+uint32(syscall.SIGKILL) {
		t.Fatalf("Wait of a created sandbox container after SIGTERM: %v, %v; want 137", w, err)
	}
	select {
	case <-sb.Done():
	default:
		t.Error("the killed sandbox container's VM still runs")
	}
	if _, err := f.s.Start(ctx, &taskAPI.StartRequest{ID: pod}); err == nil {
		t.Error("a killed container started")
	}
	if _, err := f.s.Delete(ctx, &taskAPI.DeleteRequest{ID: pod}); err != nil {
		t.Fatal(err)
	}
}

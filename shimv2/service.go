package shimv2

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/pkg/shutdown"
	"github.com/containerd/containerd/protobuf"
	"github.com/containerd/containerd/runtime"
	"github.com/containerd/containerd/runtime/v2/shim"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/kasa-runtime/kasa/virtcontainers"
)

var _ taskAPI.TaskService = (*service)(nil)

const (
	// drainTimeout bounds how long an exit waits for the process's output.
	drainTimeout = 5 * time.Second
	// vmDeathExitStatus is reported for processes of a VM that died.
	vmDeathExitStatus = 255
)

// createSandbox boots a sandbox's VM, and reapOrphans cleans up after
// dead shims; variables for tests.
var (
	createSandbox = virtcontainers.CreateSandbox
	reapOrphans   = virtcontainers.ReapOrphans
)

// service is the Task API of one shim, i.e. of one sandbox.
//
// mu guards the tables only: nothing that waits on the guest (the VM's
// boot above all) runs under it, so that State, Kill and Delete answer
// while a Create is under way or the agent is silent.
type service struct {
	ctx      context.Context
	shutdown shutdown.Service
	events   chan event
	// eventsMu orders publishes with the close of events at shutdown.
	eventsMu     sync.Mutex
	eventsClosed bool
	// noEventSink: nobody listens for events (CRI-O).
	noEventSink bool

	mu         sync.Mutex
	sandbox    *virtcontainers.Sandbox
	sandboxID  string
	containers map[string]*container
	// boot is the VM boot under way, if any.
	boot *boot
	// creating are the Creates under way, by container id.
	creating map[string]*creation
	// removed are the containers deleted last, for the events (OOM) that
	// trail their removal in the guest.
	removed recentIDs
	// vmKilled is set when Kill stopped the VM because the agent did not
	// answer a SIGKILL of the sandbox: its processes then exit as killed.
	vmKilled bool
	// sandboxExiting is set when the sandbox container's init exited and
	// its VM is being stopped for it.
	sandboxExiting bool

	// reaper is the write end of the pipe the sandbox's reaper watches:
	// held, never written, until the shim exits (reaper.go).
	reaper *os.File

	// unknownIDs rate-limits the warnings about ids the guest made up.
	unknownIDs rateLimit

	// metrics are the sandbox's (metrics.go); set when its boot begins.
	metrics *shimMetrics
}

// boot is a VM boot under way; done is closed when it has ended, either way.
type boot struct {
	id   string
	done chan struct{}
}

// creation is a Create under way: Kill and Delete of its container cancel
// it and Delete waits for done.
type creation struct {
	cancel context.CancelFunc
	done   chan struct{}
}

type event struct {
	topic string
	ev    interface{}
}

// RegisterTTRPC serves the Task API on the shim's ttrpc server.
func (s *service) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTaskService(server, s)
	return nil
}

func newService(ctx context.Context, publisher shim.Publisher, noEventSink bool, sd shutdown.Service) *service {
	limitGuestProvokedLogs(logrus.StandardLogger())
	ctx = tagLogsWithSandbox(ctx, shimIDFromArgs(os.Args[1:]))
	s := &service{ctx: ctx, shutdown: sd, events: make(chan event, 256), noEventSink: noEventSink,
		containers: map[string]*container{}, creating: map[string]*creation{}}
	go s.forward(publisher)
	sd.RegisterCallback(func(context.Context) error {
		s.eventsMu.Lock()
		defer s.eventsMu.Unlock()
		s.eventsClosed = true
		close(s.events)
		return nil
	})
	return s
}

// forward publishes events in order. noEventSink means there is none: CRI-O starts shims with an empty TTRPC_ADDRESS (it asks for
// State instead of listening), so every publish would fail, be retried by
// containerd's publisher and logged each time. The events are dropped
// then, and one line says so.
func (s *service) forward(publisher shim.Publisher) {
	if s.noEventSink {
		log.G(s.ctx).Info("no event sink (TTRPC_ADDRESS is empty, as CRI-O leaves it): task events are not published")
		for range s.events {
		}
		// The shim library waits for its publisher to close at exit.
		publisher.Close()
		return
	}
	for e := range s.events {
		if err := publisher.Publish(s.ctx, e.topic, e.ev); err != nil {
			log.G(s.ctx).WithError(err).WithField("topic", e.topic).Warn("publish event")
		}
	}
	publisher.Close()
}

func (s *service) publish(topic string, ev interface{}) {
	s.eventsMu.Lock()
	defer s.eventsMu.Unlock()
	if s.eventsClosed { // shut down: nobody forwards any more
		return
	}
	s.events <- event{topic, ev}
}

// errGRPC is the one place errors become wire errors.
func errGRPC(err error) error {
	if err == nil {
		return nil
	}
	return errdefs.ToGRPC(err)
}

func (s *service) get(id string) (*container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[id]
	if !ok {
		return nil, fmt.Errorf("container %s: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

func (s *service) getProcess(id, execID string) (*container, *process, error) {
	c, err := s.get(id)
	if err != nil {
		return nil, nil, err
	}
	p, err := c.process(execID)
	return c, p, err
}

func (s *service) pid() uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sandbox == nil {
		return 0
	}
	return uint32(s.sandbox.PID())
}

// Create makes the sandbox's VM for its first container, then creates the
// container in it. A failure leaves nothing behind.
func (s *service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (_ *taskAPI.CreateTaskResponse, retErr error) {
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("container", r.ID))
	b, err := readBundle(r.Bundle)
	if err != nil {
		return nil, errGRPC(fmt.Errorf("%w: %v", errdefs.ErrInvalidArgument, err))
	}
	spec := b.spec
	if r.Checkpoint != "" || r.ParentCheckpoint != "" {
		return nil, errGRPC(fmt.Errorf("restore from checkpoint: %w", errdefs.ErrNotImplemented))
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.mu.Lock()
	_, exists := s.containers[r.ID]
	if exists || s.creating[r.ID] != nil {
		s.mu.Unlock()
		return nil, errGRPC(fmt.Errorf("container %s: %w", r.ID, errdefs.ErrAlreadyExists))
	}
	cr := &creation{cancel: cancel, done: make(chan struct{})}
	s.creating[r.ID] = cr
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if s.creating[r.ID] == cr {
			delete(s.creating, r.ID)
		}
		s.mu.Unlock()
		close(cr.done)
	}()

	if err := s.ensureSandbox(ctx, r, spec); err != nil {
		return nil, errGRPC(err)
	}
	s.mu.Lock()
	sb := s.sandbox
	s.mu.Unlock()
	defer func() {
		if retErr != nil && r.ID == s.sandboxIDNow() {
			s.stopSandbox(ctx)
		}
	}()

	var mounts []mount.Mount
	for _, m := range r.Rootfs {
		mounts = append(mounts, mount.Mount{Type: m.Type, Source: m.Source, Options: m.Options})
	}
	err = sb.CreateContainer(ctx, virtcontainers.ContainerConfig{
		ID: r.ID, Spec: spec, Rootfs: mounts, BundleRootfs: b.rootfs,
		Terminal: r.Terminal, Stdin: r.Stdin != "", PodSandbox: isPodSandbox(spec),
	})
	if err != nil {
		return nil, errGRPC(err)
	}
	init := newProcess(s.ctx, r.ID, r.ID, stdioPaths{r.Stdin, r.Stdout, r.Stderr, r.Terminal})
	if init.io, err = startIO(init.ctx, sb, r.ID, r.ID, init.stdio); err != nil {
		init.cancel()
		sb.RemoveContainer(context.WithoutCancel(ctx), r.ID)
		return nil, errGRPC(err)
	}
	c := &container{id: r.ID, bundle: r.Bundle, spec: spec, init: init, execs: map[string]*process{}}
	s.mu.Lock()
	if err := ctx.Err(); err != nil { // Kill, Delete or Shutdown came meanwhile
		s.mu.Unlock()
		init.io.close()
		init.cancel()
		sb.RemoveContainer(context.WithoutCancel(ctx), r.ID)
		return nil, errGRPC(fmt.Errorf("container %s: create cancelled: %w", r.ID, err))
	}
	// From here on Kill and Delete find the container, not its Create.
	s.containers[r.ID] = c
	delete(s.creating, r.ID)
	s.mu.Unlock()

	s.publish(runtime.TaskCreateEventTopic, &eventstypes.TaskCreate{
		ContainerID: r.ID, Bundle: r.Bundle, Rootfs: r.Rootfs, Pid: s.pid(),
		IO: &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
	})
	return &taskAPI.CreateTaskResponse{Pid: s.pid()}, nil
}

func (s *service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errGRPC(err)
	}
	s.mu.Lock()
	sb := s.sandbox
	s.mu.Unlock()
	if st, _, _ := p.snapshot(); st != task.Status_CREATED {
		return nil, errGRPC(fmt.Errorf("invalid state transition %q to %q: %w", st, task.Status_RUNNING, errdefs.ErrFailedPrecondition))
	}
	if p.isInit() {
		err = sb.StartContainer(ctx, c.id)
	} else {
		// The agent keeps the output of a new process until it is read, so
		// the copies start once the process exists there.
		if err = sb.Exec(ctx, c.id, p.execID, p.spec, p.stdio.terminal, p.stdio.stdin != ""); err == nil {
			if p.io, err = startIO(p.ctx, sb, c.id, p.execID, p.stdio); err != nil {
				sb.Signal(ctx, c.id, p.execID, syscall.SIGKILL, false)
				go s.forgetFailedExec(sb, p)
			}
		}
	}
	if err != nil {
		return nil, errGRPC(err)
	}
	if err := p.transition(task.Status_RUNNING); err != nil {
		return nil, errGRPC(err)
	}
	go s.waitExit(sb, p)
	if p.isInit() {
		s.publish(runtime.TaskStartEventTopic, &eventstypes.TaskStart{ContainerID: c.id, Pid: s.pid()})
	} else {
		s.publish(runtime.TaskExecStartedEventTopic, &eventstypes.TaskExecStarted{ContainerID: c.id, ExecID: p.execID, Pid: s.pid()})
	}
	return &taskAPI.StartResponse{Pid: s.pid()}, nil
}

func (s *service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*emptypb.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, errGRPC(err)
	}
	v, err := typeurl.UnmarshalAny(r.Spec)
	if err != nil {
		return nil, errGRPC(fmt.Errorf("exec spec: %w: %v", errdefs.ErrInvalidArgument, err))
	}
	spec, ok := v.(*specs.Process)
	if !ok {
		return nil, errGRPC(fmt.Errorf("exec spec is a %T, not an OCI process: %w", v, errdefs.ErrInvalidArgument))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.execs[r.ExecID]; ok || r.ExecID == c.id {
		return nil, errGRPC(fmt.Errorf("exec %s: %w", r.ExecID, errdefs.ErrAlreadyExists))
	}
	p := newProcess(s.ctx, c.id, r.ExecID, stdioPaths{r.Stdin, r.Stdout, r.Stderr, r.Terminal})
	p.spec = spec
	c.execs[r.ExecID] = p
	s.publish(runtime.TaskExecAddedEventTopic, &eventstypes.TaskExecAdded{ContainerID: c.id, ExecID: r.ExecID})
	return &emptypb.Empty{}, nil
}

// Delete removes an exited process; for a container's init it removes the
// container, and for the sandbox's own container the whole VM.
//
// The Delete of a container whose Create is still under way (the VM
// booting, say) cancels that Create and waits for it to unwind.
func (s *service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	if r.ExecID == "" && s.cancelCreate(r.ID) {
		if err := s.waitCreate(ctx, r.ID); err != nil {
			return nil, errGRPC(err)
		}
	}
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errGRPC(err)
	}
	status, exitStatus, exitedAt := p.snapshot()
	if status != task.Status_CREATED && status != task.Status_STOPPED {
		return nil, errGRPC(fmt.Errorf("process %s of %s is %s: %w", p.execID, c.id, status, errdefs.ErrFailedPrecondition))
	}
	p.io.close()
	p.cancel() // ends whatever still waits on the guest for it
	s.mu.Lock()
	sb := s.sandbox
	s.mu.Unlock()
	if !p.isInit() {
		// The exit is collected: the agent forgets the exec too, so that
		// neither side's records grow with every exec.
		if status == task.Status_STOPPED && sb != nil {
			if err := sb.RemoveProcess(ctx, c.id, p.execID); err != nil && !errdefs.IsNotFound(err) {
				log.G(ctx).WithError(err).WithField("container", c.id).WithField("exec", p.execID).Warn("agent did not forget the exec")
			}
		}
		c.mu.Lock()
		delete(c.execs, p.execID)
		c.mu.Unlock()
		return &taskAPI.DeleteResponse{Pid: s.pid(), ExitStatus: exitStatus, ExitedAt: protobuf.ToTimestamp(exitedAt)}, nil
	}
	var errs []error
	if sb != nil {
		if err := sb.RemoveContainer(ctx, c.id); err != nil {
			errs = append(errs, err)
		}
	}
	s.mu.Lock()
	delete(s.containers, c.id)
	s.removed.add(c.id, time.Now())
	isSandbox := c.id == s.sandboxID
	s.mu.Unlock()
	if isSandbox {
		if err := s.stopSandbox(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	pid := s.pid()
	s.publish(runtime.TaskDeleteEventTopic, &eventstypes.TaskDelete{
		ContainerID: c.id, Pid: pid, ExitStatus: exitStatus, ExitedAt: protobuf.ToTimestamp(exitedAt), ID: c.id,
	})
	if len(errs) > 0 {
		log.G(ctx).WithError(fmt.Errorf("%v", errs)).Warn("delete left errors")
	}
	return &taskAPI.DeleteResponse{Pid: pid, ExitStatus: exitStatus, ExitedAt: protobuf.ToTimestamp(exitedAt)}, nil
}

func (s *service) stopSandbox(ctx context.Context) error {
	s.mu.Lock()
	sb := s.sandbox
	s.mu.Unlock()
	if sb == nil {
		return nil
	}
	s.metricsNow().stopServing(ctx)
	return sb.Stop(context.WithoutCancel(ctx))
}

// Shutdown ends the shim once it serves no container.
func (s *service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	n := len(s.containers)
	s.mu.Unlock()
	if n > 0 && !r.Now {
		return &emptypb.Empty{}, nil
	}
	// A Create under way (a boot, say) is cancelled, and let unwind so that
	// it leaves no VM behind.
	s.mu.Lock()
	var creates []*creation
	for _, cr := range s.creating {
		cr.cancel()
		creates = append(creates, cr)
	}
	s.mu.Unlock()
	for _, cr := range creates {
		select {
		case <-cr.done:
		case <-time.After(createUnwindWait):
			log.G(ctx).Warn("a cancelled create did not unwind in time; shutting down anyway")
		}
	}
	if err := s.stopSandbox(ctx); err != nil {
		log.G(ctx).WithError(err).Warn("stopping the sandbox at shutdown")
	}
	s.shutdown.Shutdown()
	return &emptypb.Empty{}, nil
}

func (s *service) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errGRPC(err)
	}
	select {
	case <-p.exited:
	case <-ctx.Done():
		return nil, errGRPC(ctx.Err())
	}
	_, status, at := p.snapshot()
	return &taskAPI.WaitResponse{ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at)}, nil
}

func (s *service) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	return &taskAPI.ConnectResponse{ShimPid: uint32(os.Getpid()), TaskPid: s.pid()}, nil
}

// Checkpoint is not available for VM sandboxes.
func (s *service) Checkpoint(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, errGRPC(fmt.Errorf("checkpoint: %w", errdefs.ErrNotImplemented))
}

func (s *service) sandboxOf(id string) (*virtcontainers.Sandbox, error) {
	if _, err := s.get(id); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sandbox, nil
}

// Kill signals a process. Killing a container whose Create is under way
// cancels the Create. When the agent does not answer a SIGKILL of the
// sandbox's own container, the VM is stopped instead: that kills every
// process of the sandbox, which is what was asked, and a silent guest
// cannot keep the pod alive.
func (s *service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*emptypb.Empty, error) {
	if (r.ExecID == "" || r.ExecID == r.ID) && s.cancelCreate(r.ID) {
		return &emptypb.Empty{}, nil
	}
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errGRPC(err)
	}
	if sig := syscall.Signal(r.Signal); p.isInit() && isPodSandbox(c.spec) && terminating[sig] && sig != syscall.SIGKILL {
		// The pod's sandbox container runs the agent's pause, which holds
		// no state: any signal meant to end it is sent as SIGKILL. As PID
		// 1 of its namespace the pause misses a SIGTERM that comes before
		// it installed its handler, which under emulation takes a while:
		// CRI-O's StopPodSandbox right after RunPodSandbox (critest does)
		// then waited out its whole timeout.
		r.Signal = uint32(syscall.SIGKILL)
	}
	st, _, _ := p.snapshot()
	if st == task.Status_STOPPED {
		return nil, errGRPC(fmt.Errorf("process %s: %w", p.execID, errdefs.ErrNotFound))
	}
	if sig := syscall.Signal(r.Signal); st == task.Status_CREATED && terminating[sig] {
		// Never started: nothing in the guest runs it yet, nor waits for
		// it. As runc's created init would, it ends by the signal (CRI-O
		// stops a created container with Kill and Wait); Delete removes it
		// from the guest.
		if p.isInit() && s.endsSandbox(r.ID) {
			if err := s.stopSandbox(ctx); err != nil {
				log.G(ctx).WithError(err).WithField("sandbox", r.ID).Warn("stopping the VM of a killed sandbox container")
			}
		}
		if p.setExited(128+uint32(sig), time.Now()) {
			s.publishExit(p)
		}
		return &emptypb.Empty{}, nil
	}
	sb, _ := s.sandboxOf(r.ID)
	err = sb.Signal(ctx, r.ID, p.execID, syscall.Signal(r.Signal), r.All)
	if err != nil && agentSilent(err) && syscall.Signal(r.Signal) == syscall.SIGKILL && p.isInit() && r.ID == s.sandboxIDNow() {
		log.G(ctx).WithError(err).WithField("sandbox", r.ID).Warn("agent did not answer SIGKILL of the sandbox: stopping its VM")
		s.mu.Lock()
		s.vmKilled = true
		s.mu.Unlock()
		if serr := s.stopSandbox(ctx); serr != nil {
			return nil, errGRPC(serr)
		}
		return &emptypb.Empty{}, nil
	}
	return &emptypb.Empty{}, errGRPC(err)
}

// terminating are the signals whose default action ends a process: what
// ends one that never started.
var terminating = map[syscall.Signal]bool{
	syscall.SIGKILL: true, syscall.SIGTERM: true, syscall.SIGINT: true, syscall.SIGHUP: true, syscall.SIGQUIT: true,
}

// agentSilent reports whether err says the agent did not answer in time,
// or is no longer reachable.
func agentSilent(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errdefs.IsDeadlineExceeded(err) || errdefs.IsUnavailable(err) || errors.Is(err, ttrpc.ErrClosed)
}

func (s *service) sandboxIDNow() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sandboxID
}

package shimv2

import (
	"context"
	"fmt"

	cgroupsv2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/protobuf"
	"github.com/containerd/containerd/runtime"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/kasa-runtime/kasa/agent/api"
)

func (s *service) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errGRPC(err)
	}
	status, exitStatus, exitedAt := p.snapshot()
	return &taskAPI.StateResponse{
		ID: p.execID, Bundle: c.bundle, Pid: s.pid(), Status: status,
		Stdin: p.stdio.stdin, Stdout: p.stdio.stdout, Stderr: p.stdio.stderr, Terminal: p.stdio.terminal,
		ExitStatus: exitStatus, ExitedAt: protobuf.ToTimestamp(exitedAt), ExecID: r.ExecID,
	}, nil
}

func (s *service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	sb, err := s.sandboxOf(r.ID)
	if err != nil {
		return nil, errGRPC(err)
	}
	procs, err := sb.Pids(ctx, r.ID)
	if err != nil {
		return nil, errGRPC(err)
	}
	out := make([]*task.ProcessInfo, 0, len(procs))
	for _, p := range procs {
		out = append(out, &task.ProcessInfo{Pid: p.GetPid()})
	}
	return &taskAPI.PidsResponse{Processes: out}, nil
}

// setContainerStatus moves a container's running processes between
// RUNNING and PAUSED.
func (s *service) setContainerStatus(id string, to task.Status) error {
	c, err := s.get(id)
	if err != nil {
		return err
	}
	for _, p := range c.all() {
		if st, _, _ := p.snapshot(); st == task.Status_RUNNING || st == task.Status_PAUSED {
			if err := p.transition(to); err != nil && p.isInit() {
				return err
			}
		}
	}
	return nil
}

func (s *service) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*emptypb.Empty, error) {
	sb, err := s.sandboxOf(r.ID)
	if err != nil {
		return nil, errGRPC(err)
	}
	if err := sb.Pause(ctx, r.ID); err != nil {
		return nil, errGRPC(err)
	}
	if err := s.setContainerStatus(r.ID, task.Status_PAUSED); err != nil {
		return nil, errGRPC(err)
	}
	s.publish(runtime.TaskPausedEventTopic, &eventstypes.TaskPaused{ContainerID: r.ID})
	return &emptypb.Empty{}, nil
}

func (s *service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*emptypb.Empty, error) {
	sb, err := s.sandboxOf(r.ID)
	if err != nil {
		return nil, errGRPC(err)
	}
	if err := sb.Resume(ctx, r.ID); err != nil {
		return nil, errGRPC(err)
	}
	if err := s.setContainerStatus(r.ID, task.Status_RUNNING); err != nil {
		return nil, errGRPC(err)
	}
	s.publish(runtime.TaskResumedEventTopic, &eventstypes.TaskResumed{ContainerID: r.ID})
	return &emptypb.Empty{}, nil
}

func (s *service) ResizePty(ctx context.Context, r *taskAPI.ResizePtyRequest) (*emptypb.Empty, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errGRPC(err)
	}
	if !p.stdio.terminal {
		return nil, errGRPC(fmt.Errorf("process %s has no terminal: %w", p.execID, errdefs.ErrFailedPrecondition))
	}
	sb, _ := s.sandboxOf(r.ID)
	return &emptypb.Empty{}, errGRPC(sb.ResizePty(ctx, r.ID, p.execID, r.Width, r.Height))
}

func (s *service) CloseIO(ctx context.Context, r *taskAPI.CloseIORequest) (*emptypb.Empty, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errGRPC(err)
	}
	if r.Stdin {
		p.io.closeStdin()
	}
	return &emptypb.Empty{}, nil
}

func (s *service) Update(ctx context.Context, r *taskAPI.UpdateTaskRequest) (*emptypb.Empty, error) {
	sb, err := s.sandboxOf(r.ID)
	if err != nil {
		return nil, errGRPC(err)
	}
	v, err := typeurl.UnmarshalAny(r.Resources)
	if err != nil {
		return nil, errGRPC(fmt.Errorf("resources: %w: %v", errdefs.ErrInvalidArgument, err))
	}
	res, ok := v.(*specs.LinuxResources)
	if !ok {
		return nil, errGRPC(fmt.Errorf("resources are a %T, not OCI Linux resources: %w", v, errdefs.ErrInvalidArgument))
	}
	return &emptypb.Empty{}, errGRPC(sb.Update(ctx, r.ID, res))
}

// Stats returns the guest cgroup's statistics as containerd's cgroup v2
// metrics (the guest always runs cgroup v2).
func (s *service) Stats(ctx context.Context, r *taskAPI.StatsRequest) (*taskAPI.StatsResponse, error) {
	sb, err := s.sandboxOf(r.ID)
	if err != nil {
		return nil, errGRPC(err)
	}
	st, err := sb.Stats(ctx, r.ID)
	if err != nil {
		return nil, errGRPC(err)
	}
	any, err := typeurl.MarshalAny(cgroupMetrics(st.GetCgroupStats()))
	if err != nil {
		return nil, errGRPC(err)
	}
	return &taskAPI.StatsResponse{Stats: protobuf.FromAny(any)}, nil
}

func cgroupMetrics(cs *api.CgroupStats) *cgroupsv2.Metrics {
	m := &cgroupsv2.Metrics{}
	if c := cs.GetCpu(); c != nil {
		m.CPU = &cgroupsv2.CPUStat{
			UsageUsec:  c.GetUsageTotalNsec() / 1000,
			UserUsec:   c.GetUsageUserNsec() / 1000,
			SystemUsec: c.GetUsageKernelNsec() / 1000,
		}
		if t := c.GetThrottling(); t != nil {
			m.CPU.NrPeriods = t.GetPeriods()
			m.CPU.NrThrottled = t.GetThrottledPeriods()
			m.CPU.ThrottledUsec = t.GetThrottledTimeNsec() / 1000
		}
	}
	if mem := cs.GetMemory(); mem != nil {
		m.Memory = &cgroupsv2.MemoryStat{
			Usage:        mem.GetUsageBytes(),
			UsageLimit:   mem.GetLimitBytes(),
			File:         mem.GetCacheBytes(),
			Anon:         mem.GetRssBytes(),
			InactiveFile: mem.GetInactiveFileBytes(),
			SwapUsage:    mem.GetSwapUsageBytes(),
			SwapLimit:    mem.GetSwapLimitBytes(),
		}
		if e := mem.GetEvents(); e != nil {
			m.MemoryEvents = &cgroupsv2.MemoryEvents{Low: e.GetLow(), High: e.GetHigh(), Max: e.GetMax(), Oom: e.GetOom(), OomKill: e.GetOomKill()}
		}
	}
	if p := cs.GetPids(); p != nil {
		m.Pids = &cgroupsv2.PidsStat{Current: p.GetCurrent(), Limit: p.GetLimit()}
	}
	return m
}

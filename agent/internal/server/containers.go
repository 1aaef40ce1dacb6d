package server

import (
	"context"
	"time"

	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/agent/internal/container"
)

// wire turns an error of the agent's packages into a ttrpc status: the
// only place errdefs categories become gRPC codes.
func wire(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	log.G(ctx).WithError(err).Debug(op + " failed")
	return errdefs.ToGRPC(err)
}

var empty = &emptypb.Empty{}

func (s *Service) CreateSandbox(ctx context.Context, req *api.CreateSandboxRequest) (*emptypb.Empty, error) {
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("sandbox", req.GetSandboxId()))
	if err := s.sandbox.Create(ctx, req); err != nil {
		return nil, wire(ctx, "CreateSandbox", err)
	}
	if req.GetSandboxPidns() {
		s.containers.ShareSandboxPidns()
	}
	log.G(ctx).WithField("hostname", req.GetHostname()).Info("sandbox created")
	return empty, nil
}

func (s *Service) GetOOMEvent(ctx context.Context, _ *api.GetOOMEventRequest) (*api.GetOOMEventResponse, error) {
	id, err := s.containers.NextOOM(ctx)
	if err != nil {
		return nil, wire(ctx, "GetOOMEvent", err)
	}
	return &api.GetOOMEventResponse{ContainerId: id}, nil
}

func (s *Service) CopyFile(ctx context.Context, req *api.CopyFileRequest) (*emptypb.Empty, error) {
	return empty, wire(ctx, "CopyFile", s.copyTarget.CopyFile(req))
}

// logCtx tags the log of a request with the sandbox and container.
func (s *Service) logCtx(ctx context.Context, containerID string) context.Context {
	e := log.G(ctx).WithField("container", containerID)
	if id := s.sandbox.ID(); id != "" {
		e = e.WithField("sandbox", id)
	}
	return log.WithLogger(ctx, e)
}

func (s *Service) CreateContainer(ctx context.Context, req *api.CreateContainerRequest) (*emptypb.Empty, error) {
	ctx = s.logCtx(ctx, req.GetContainerId())
	err := s.containers.Create(ctx, container.CreateRequest{
		ID: req.GetContainerId(), ExecID: req.GetExecId(), Spec: req.GetOciSpecJson(),
		Storages: req.GetStorages(), Terminal: req.GetTerminal(), Stdin: req.GetStdin(),
		SandboxContainer: req.GetSandboxContainer(), SandboxNamespaces: req.GetSandboxNamespaces(),
	})
	return empty, wire(ctx, "CreateContainer", err)
}

func (s *Service) StartContainer(ctx context.Context, req *api.StartContainerRequest) (*emptypb.Empty, error) {
	ctx = s.logCtx(ctx, req.GetContainerId())
	return empty, wire(ctx, "StartContainer", s.containers.Start(ctx, req.GetContainerId()))
}

func (s *Service) RemoveContainer(ctx context.Context, req *api.RemoveContainerRequest) (*emptypb.Empty, error) {
	ctx = s.logCtx(ctx, req.GetContainerId())
	timeout := time.Duration(req.GetTimeoutSeconds()) * time.Second
	return empty, wire(ctx, "RemoveContainer", s.containers.Remove(ctx, req.GetContainerId(), timeout))
}

func (s *Service) ExecProcess(ctx context.Context, req *api.ExecProcessRequest) (*emptypb.Empty, error) {
	ctx = s.logCtx(ctx, req.GetContainerId())
	err := s.containers.Exec(ctx, req.GetContainerId(), req.GetExecId(), req.GetProcessJson(), req.GetTerminal(), req.GetStdin())
	return empty, wire(ctx, "ExecProcess", err)
}

func (s *Service) SignalProcess(ctx context.Context, req *api.SignalProcessRequest) (*emptypb.Empty, error) {
	ctx = s.logCtx(ctx, req.GetContainerId())
	err := s.containers.Signal(ctx, req.GetContainerId(), req.GetExecId(), unix.Signal(req.GetSignal()), req.GetAll())
	return empty, wire(ctx, "SignalProcess", err)
}

func (s *Service) WaitProcess(ctx context.Context, req *api.WaitProcessRequest) (*api.WaitProcessResponse, error) {
	code, at, err := s.containers.Wait(ctx, req.GetContainerId(), req.GetExecId())
	if err != nil {
		return nil, wire(s.logCtx(ctx, req.GetContainerId()), "WaitProcess", err)
	}
	return &api.WaitProcessResponse{ExitStatus: int32(code), ExitedAt: timestamppb.New(at)}, nil
}

func (s *Service) RemoveProcess(ctx context.Context, req *api.RemoveProcessRequest) (*emptypb.Empty, error) {
	ctx = s.logCtx(ctx, req.GetContainerId())
	return empty, wire(ctx, "RemoveProcess", s.containers.RemoveProcess(ctx, req.GetContainerId(), req.GetExecId()))
}

func (s *Service) ListProcesses(ctx context.Context, req *api.ListProcessesRequest) (*api.ListProcessesResponse, error) {
	procs, err := s.containers.Processes(ctx, req.GetContainerId())
	if err != nil {
		return nil, wire(s.logCtx(ctx, req.GetContainerId()), "ListProcesses", err)
	}
	return &api.ListProcessesResponse{Processes: procs}, nil
}

func (s *Service) UpdateContainer(ctx context.Context, req *api.UpdateContainerRequest) (*emptypb.Empty, error) {
	ctx = s.logCtx(ctx, req.GetContainerId())
	return empty, wire(ctx, "UpdateContainer", s.containers.Update(ctx, req.GetContainerId(), req.GetResources()))
}

func (s *Service) StatsContainer(ctx context.Context, req *api.StatsContainerRequest) (*api.StatsContainerResponse, error) {
	resp, err := s.containers.Stats(ctx, req.GetContainerId())
	if err != nil {
		return nil, wire(s.logCtx(ctx, req.GetContainerId()), "StatsContainer", err)
	}
	resp.Timestamp = timestamppb.Now()
	return resp, nil
}

func (s *Service) PauseContainer(ctx context.Context, req *api.PauseContainerRequest) (*emptypb.Empty, error) {
	ctx = s.logCtx(ctx, req.GetContainerId())
	return empty, wire(ctx, "PauseContainer", s.containers.Pause(ctx, req.GetContainerId()))
}

func (s *Service) ResumeContainer(ctx context.Context, req *api.ResumeContainerRequest) (*emptypb.Empty, error) {
	ctx = s.logCtx(ctx, req.GetContainerId())
	return empty, wire(ctx, "ResumeContainer", s.containers.Resume(ctx, req.GetContainerId()))
}

func (s *Service) WriteStdin(ctx context.Context, req *api.WriteStdinRequest) (*api.WriteStdinResponse, error) {
	n, err := s.containers.WriteStdin(ctx, req.GetContainerId(), req.GetExecId(), req.GetData())
	if err != nil {
		return nil, wire(s.logCtx(ctx, req.GetContainerId()), "WriteStdin", err)
	}
	return &api.WriteStdinResponse{Len: uint32(n)}, nil
}

func (s *Service) ReadStdout(ctx context.Context, req *api.ReadStreamRequest) (*api.ReadStreamResponse, error) {
	return s.readStream(ctx, req, false)
}

func (s *Service) ReadStderr(ctx context.Context, req *api.ReadStreamRequest) (*api.ReadStreamResponse, error) {
	return s.readStream(ctx, req, true)
}

func (s *Service) readStream(ctx context.Context, req *api.ReadStreamRequest, stderr bool) (*api.ReadStreamResponse, error) {
	data, eof, err := s.containers.ReadOutput(ctx, req.GetContainerId(), req.GetExecId(), stderr, int(req.GetMaxLen()))
	if err != nil {
		return nil, wire(s.logCtx(ctx, req.GetContainerId()), "ReadStream", err)
	}
	return &api.ReadStreamResponse{Data: data, Eof: eof}, nil
}

func (s *Service) CloseStdin(ctx context.Context, req *api.CloseStdinRequest) (*emptypb.Empty, error) {
	ctx = s.logCtx(ctx, req.GetContainerId())
	return empty, wire(ctx, "CloseStdin", s.containers.CloseStdin(ctx, req.GetContainerId(), req.GetExecId()))
}

func (s *Service) TtyWinResize(ctx context.Context, req *api.TtyWinResizeRequest) (*emptypb.Empty, error) {
	ctx = s.logCtx(ctx, req.GetContainerId())
	err := s.containers.ResizeTerminal(ctx, req.GetContainerId(), req.GetExecId(), req.GetRows(), req.GetCols())
	return empty, wire(ctx, "TtyWinResize", err)
}

package server

import (
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/kasa-runtime/kasa/agent/api"
)

func invalidArgument(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}

func notYet(method string) error {
	return status.Error(codes.Unimplemented, fmt.Sprintf("%s is not implemented by this agent (API v%d)", method, api.APIVersion))
}

// unimplemented answers the RPCs of capabilities that have not landed yet
// with codes.Unimplemented, which the host client turns into ErrNotImplemented.
type unimplemented struct{}

func (unimplemented) CreateSandbox(context.Context, *api.CreateSandboxRequest) (*emptypb.Empty, error) {
	return nil, notYet("CreateSandbox")
}
func (unimplemented) GetOOMEvent(context.Context, *api.GetOOMEventRequest) (*api.GetOOMEventResponse, error) {
	return nil, notYet("GetOOMEvent")
}
func (unimplemented) GetMetrics(context.Context, *api.GetMetricsRequest) (*api.GetMetricsResponse, error) {
	return nil, notYet("GetMetrics")
}
func (unimplemented) CreateContainer(context.Context, *api.CreateContainerRequest) (*emptypb.Empty, error) {
	return nil, notYet("CreateContainer")
}
func (unimplemented) StartContainer(context.Context, *api.StartContainerRequest) (*emptypb.Empty, error) {
	return nil, notYet("StartContainer")
}
func (unimplemented) RemoveContainer(context.Context, *api.RemoveContainerRequest) (*emptypb.Empty, error) {
	return nil, notYet("RemoveContainer")
}
func (unimplemented) ExecProcess(context.Context, *api.ExecProcessRequest) (*emptypb.Empty, error) {
	return nil, notYet("ExecProcess")
}
func (unimplemented) SignalProcess(context.Context, *api.SignalProcessRequest) (*emptypb.Empty, error) {
	return nil, notYet("SignalProcess")
}
func (unimplemented) WaitProcess(context.Context, *api.WaitProcessRequest) (*api.WaitProcessResponse, error) {
	return nil, notYet("WaitProcess")
}
func (unimplemented) ListProcesses(context.Context, *api.ListProcessesRequest) (*api.ListProcessesResponse, error) {
	return nil, notYet("ListProcesses")
}
func (unimplemented) UpdateContainer(context.Context, *api.UpdateContainerRequest) (*emptypb.Empty, error) {
	return nil, notYet("UpdateContainer")
}
func (unimplemented) StatsContainer(context.Context, *api.StatsContainerRequest) (*api.StatsContainerResponse, error) {
	return nil, notYet("StatsContainer")
}
func (unimplemented) PauseContainer(context.Context, *api.PauseContainerRequest) (*emptypb.Empty, error) {
	return nil, notYet("PauseContainer")
}
func (unimplemented) ResumeContainer(context.Context, *api.ResumeContainerRequest) (*emptypb.Empty, error) {
	return nil, notYet("ResumeContainer")
}
func (unimplemented) WriteStdin(context.Context, *api.WriteStdinRequest) (*api.WriteStdinResponse, error) {
	return nil, notYet("WriteStdin")
}
func (unimplemented) ReadStdout(context.Context, *api.ReadStreamRequest) (*api.ReadStreamResponse, error) {
	return nil, notYet("ReadStdout")
}
func (unimplemented) ReadStderr(context.Context, *api.ReadStreamRequest) (*api.ReadStreamResponse, error) {
	return nil, notYet("ReadStderr")
}
func (unimplemented) CloseStdin(context.Context, *api.CloseStdinRequest) (*emptypb.Empty, error) {
	return nil, notYet("CloseStdin")
}
func (unimplemented) TtyWinResize(context.Context, *api.TtyWinResizeRequest) (*emptypb.Empty, error) {
	return nil, notYet("TtyWinResize")
}
func (unimplemented) UpdateInterface(context.Context, *api.UpdateInterfaceRequest) (*api.UpdateInterfaceResponse, error) {
	return nil, notYet("UpdateInterface")
}
func (unimplemented) ListInterfaces(context.Context, *api.ListInterfacesRequest) (*api.ListInterfacesResponse, error) {
	return nil, notYet("ListInterfaces")
}
func (unimplemented) UpdateRoutes(context.Context, *api.UpdateRoutesRequest) (*api.UpdateRoutesResponse, error) {
	return nil, notYet("UpdateRoutes")
}
func (unimplemented) ListRoutes(context.Context, *api.ListRoutesRequest) (*api.ListRoutesResponse, error) {
	return nil, notYet("ListRoutes")
}
func (unimplemented) AddARPNeighbors(context.Context, *api.AddARPNeighborsRequest) (*emptypb.Empty, error) {
	return nil, notYet("AddARPNeighbors")
}
func (unimplemented) CopyFile(context.Context, *api.CopyFileRequest) (*emptypb.Empty, error) {
	return nil, notYet("CopyFile")
}
func (unimplemented) OnlineCPUMem(context.Context, *api.OnlineCPUMemRequest) (*emptypb.Empty, error) {
	return nil, notYet("OnlineCPUMem")
}
func (unimplemented) MemHotplugByProbe(context.Context, *api.MemHotplugByProbeRequest) (*emptypb.Empty, error) {
	return nil, notYet("MemHotplugByProbe")
}

package main

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/kasa-runtime/kasa/agent/api"
)

// unimplemented answers Unimplemented for every RPC the hostile agent does
// not play with (written once from api.AgentServiceService).
type unimplemented struct{}

func notImplemented(m string) error {
	return status.Error(codes.Unimplemented, m+": not in the hostile agent")
}

func (unimplemented) GetGuestDetails(context.Context, *api.GetGuestDetailsRequest) (*api.GetGuestDetailsResponse, error) {
	return nil, notImplemented("GetGuestDetails")
}

func (unimplemented) ExecProcess(context.Context, *api.ExecProcessRequest) (*emptypb.Empty, error) {
	return nil, notImplemented("ExecProcess")
}

func (unimplemented) UpdateContainer(context.Context, *api.UpdateContainerRequest) (*emptypb.Empty, error) {
	return nil, notImplemented("UpdateContainer")
}

func (unimplemented) PauseContainer(context.Context, *api.PauseContainerRequest) (*emptypb.Empty, error) {
	return nil, notImplemented("PauseContainer")
}

func (unimplemented) ResumeContainer(context.Context, *api.ResumeContainerRequest) (*emptypb.Empty, error) {
	return nil, notImplemented("ResumeContainer")
}

func (unimplemented) WriteStdin(context.Context, *api.WriteStdinRequest) (*api.WriteStdinResponse, error) {
	return nil, notImplemented("WriteStdin")
}

func (unimplemented) TtyWinResize(context.Context, *api.TtyWinResizeRequest) (*emptypb.Empty, error) {
	return nil, notImplemented("TtyWinResize")
}

func (unimplemented) UpdateInterface(context.Context, *api.UpdateInterfaceRequest) (*api.UpdateInterfaceResponse, error) {
	return nil, notImplemented("UpdateInterface")
}

func (unimplemented) ListInterfaces(context.Context, *api.ListInterfacesRequest) (*api.ListInterfacesResponse, error) {
	return nil, notImplemented("ListInterfaces")
}

func (unimplemented) UpdateRoutes(context.Context, *api.UpdateRoutesRequest) (*api.UpdateRoutesResponse, error) {
	return nil, notImplemented("UpdateRoutes")
}

func (unimplemented) ListRoutes(context.Context, *api.ListRoutesRequest) (*api.ListRoutesResponse, error) {
	return nil, notImplemented("ListRoutes")
}

func (unimplemented) AddARPNeighbors(context.Context, *api.AddARPNeighborsRequest) (*emptypb.Empty, error) {
	return nil, notImplemented("AddARPNeighbors")
}

func (unimplemented) CopyFile(context.Context, *api.CopyFileRequest) (*emptypb.Empty, error) {
	return nil, notImplemented("CopyFile")
}

func (unimplemented) OnlineCPUMem(context.Context, *api.OnlineCPUMemRequest) (*emptypb.Empty, error) {
	return nil, notImplemented("OnlineCPUMem")
}

func (unimplemented) MemHotplugByProbe(context.Context, *api.MemHotplugByProbeRequest) (*emptypb.Empty, error) {
	return nil, notImplemented("MemHotplugByProbe")
}

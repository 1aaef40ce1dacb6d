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

func (unimplemented) OnlineCPUMem(context.Context, *api.OnlineCPUMemRequest) (*emptypb.Empty, error) {
	return nil, notYet("OnlineCPUMem")
}
func (unimplemented) MemHotplugByProbe(context.Context, *api.MemHotplugByProbeRequest) (*emptypb.Empty, error) {
	return nil, notYet("MemHotplugByProbe")
}

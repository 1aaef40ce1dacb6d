package server

import (
	"context"

	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/agent/internal/netcfg"
)

// guestNet configures the network namespace the agent runs in: the
// guest's. Network RPCs are answered through it.
var guestNet = netcfg.New(nil)

func (s *Service) UpdateInterface(ctx context.Context, req *api.UpdateInterfaceRequest) (*api.UpdateInterfaceResponse, error) {
	iface, err := guestNet.UpdateInterface(req.GetInterface())
	if err != nil {
		return nil, wire(ctx, "UpdateInterface", err)
	}
	return &api.UpdateInterfaceResponse{Interface: iface}, nil
}

func (s *Service) ListInterfaces(ctx context.Context, _ *api.ListInterfacesRequest) (*api.ListInterfacesResponse, error) {
	ifaces, err := guestNet.ListInterfaces()
	if err != nil {
		return nil, wire(ctx, "ListInterfaces", err)
	}
	return &api.ListInterfacesResponse{Interfaces: ifaces}, nil
}

func (s *Service) UpdateRoutes(ctx context.Context, req *api.UpdateRoutesRequest) (*api.UpdateRoutesResponse, error) {
	routes, err := guestNet.UpdateRoutes(req.GetRoutes())
	if err != nil {
		return nil, wire(ctx, "UpdateRoutes", err)
	}
	return &api.UpdateRoutesResponse{Routes: routes}, nil
}

func (s *Service) ListRoutes(ctx context.Context, _ *api.ListRoutesRequest) (*api.ListRoutesResponse, error) {
	routes, err := guestNet.ListRoutes()
	if err != nil {
		return nil, wire(ctx, "ListRoutes", err)
	}
	return &api.ListRoutesResponse{Routes: routes}, nil
}

func (s *Service) AddARPNeighbors(ctx context.Context, req *api.AddARPNeighborsRequest) (*emptypb.Empty, error) {
	if err := guestNet.AddNeighbors(req.GetNeighbors()); err != nil {
		return nil, wire(ctx, "AddARPNeighbors", err)
	}
	return empty, nil
}

package client

import (
	"context"

	"github.com/kasa-runtime/kasa/agent/api"
)

// UpdateInterface configures the guest NIC whose MAC is iface.HwAddr (name,
// MTU, flags, addresses, up) and returns it as the guest now has it.
func (c *Client) UpdateInterface(ctx context.Context, iface *api.Interface) (*api.Interface, error) {
	ctx, cancel := c.call(ctx)
	defer cancel()
	resp, err := c.api.UpdateInterface(ctx, &api.UpdateInterfaceRequest{Interface: iface})
	if err != nil {
		return nil, wrap("UpdateInterface", err)
	}
	return resp.GetInterface(), nil
}

// ListInterfaces lists the guest's network interfaces, lo included.
func (c *Client) ListInterfaces(ctx context.Context) ([]*api.Interface, error) {
	ctx, cancel := c.call(ctx)
	defer cancel()
	resp, err := c.api.ListInterfaces(ctx, &api.ListInterfacesRequest{})
	if err != nil {
		return nil, wrap("ListInterfaces", err)
	}
	return resp.GetInterfaces(), nil
}

// UpdateRoutes replaces the guest's main-table routes (all interfaces but
// lo) with routes and returns the guest's routes afterwards.
func (c *Client) UpdateRoutes(ctx context.Context, routes []*api.Route) ([]*api.Route, error) {
	ctx, cancel := c.call(ctx)
	defer cancel()
	resp, err := c.api.UpdateRoutes(ctx, &api.UpdateRoutesRequest{Routes: routes})
	if err != nil {
		return nil, wrap("UpdateRoutes", err)
	}
	return resp.GetRoutes(), nil
}

// ListRoutes lists the guest's main-table routes.
func (c *Client) ListRoutes(ctx context.Context) ([]*api.Route, error) {
	ctx, cancel := c.call(ctx)
	defer cancel()
	resp, err := c.api.ListRoutes(ctx, &api.ListRoutesRequest{})
	if err != nil {
		return nil, wrap("ListRoutes", err)
	}
	return resp.GetRoutes(), nil
}

// AddARPNeighbors adds or replaces static neighbour entries in the guest
// (NUD_PERMANENT unless an entry gives its state).
func (c *Client) AddARPNeighbors(ctx context.Context, neighbors []*api.Neighbor) error {
	ctx, cancel := c.call(ctx)
	defer cancel()
	_, err := c.api.AddARPNeighbors(ctx, &api.AddARPNeighborsRequest{Neighbors: neighbors})
	return wrap("AddARPNeighbors", err)
}

package virtcontainers

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/configuration"
	"github.com/kasa-runtime/kasa/hypervisor"
	"github.com/kasa-runtime/kasa/virtcontainers/network"
)

// podNetwork is the pod's network as the sandbox plumbed it: each veth of
// the pod netns joined to a tap whose fd the VM's NIC uses.
type podNetwork struct {
	netns     string
	endpoints []network.Endpoint
	taps      []*network.Tap
}

// attachPodNetwork scans the pod netns and joins every veth to a NIC of the
// VM: a tap with tc redirects (tcfilter, the default) or a macvtap on the
// veth. With no netns, or model "none", the guest has only lo.
func attachPodNetwork(netns string, model configuration.InterNetworkingModel) (_ *podNetwork, retErr error) {
	pn := &podNetwork{netns: netns}
	if netns == "" || model == configuration.NetNone {
		return pn, nil
	}
	attach := network.AttachTap
	if model == configuration.NetMacvtap {
		attach = network.AttachMacvtap
	}
	eps, err := network.Scan(netns)
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			pn.detach()
		}
	}()
	for i, ep := range eps {
		tap, err := attach(netns, ep, i)
		if err != nil {
			return nil, err
		}
		pn.taps = append(pn.taps, tap)
	}
	pn.endpoints = eps
	return pn, nil
}

// nics are the VM's network cards: the taps, with the veths' MACs.
func (pn *podNetwork) nics() []hypervisor.NIC {
	var out []hypervisor.NIC
	for i, t := range pn.taps {
		out = append(out, hypervisor.NIC{TapFile: t.File, MAC: pn.endpoints[i].MAC})
	}
	return out
}

// detach removes the taps and their redirects. Idempotent.
func (pn *podNetwork) detach() error {
	if pn == nil {
		return nil
	}
	var errs []error
	for _, t := range pn.taps {
		errs = append(errs, t.Detach())
	}
	return errors.Join(errs...)
}

// guestNetworkAgent is what configuring the guest's network needs of the agent.
type guestNetworkAgent interface {
	UpdateInterface(ctx context.Context, iface *api.Interface) (*api.Interface, error)
	UpdateRoutes(ctx context.Context, routes []*api.Route) ([]*api.Route, error)
	AddARPNeighbors(ctx context.Context, neighbors []*api.Neighbor) error
}

// configureGuest gives each guest NIC (found by the veth's MAC) the veth's
// name, MTU and addresses, then the routes and permanent neighbours.
func (pn *podNetwork) configureGuest(ctx context.Context, a guestNetworkAgent) error {
	if len(pn.endpoints) == 0 {
		return nil
	}
	var routes []*api.Route
	var neighbors []*api.Neighbor
	for _, ep := range pn.endpoints {
		if _, err := a.UpdateInterface(ctx, guestInterface(ep)); err != nil {
			return fmt.Errorf("configure guest interface %s (%s): %w", ep.Name, ep.MAC, err)
		}
		for _, r := range ep.Routes {
			routes = append(routes, guestRoute(r))
		}
		for _, n := range ep.Neighbors {
			neighbors = append(neighbors, &api.Neighbor{Ip: n.IP.String(), Lladdr: n.MAC.String(), Device: n.Device, State: unix.NUD_PERMANENT})
		}
	}
	if len(routes) > 0 {
		if _, err := a.UpdateRoutes(ctx, routes); err != nil {
			return fmt.Errorf("configure guest routes: %w", err)
		}
	}
	if len(neighbors) > 0 {
		if err := a.AddARPNeighbors(ctx, neighbors); err != nil {
			return fmt.Errorf("configure guest neighbours: %w", err)
		}
	}
	return nil
}

func family(f network.Family) api.IPFamily {
	if f == network.IPv6 {
		return api.IPFamily_IP_FAMILY_V6
	}
	return api.IPFamily_IP_FAMILY_V4
}

func guestInterface(ep network.Endpoint) *api.Interface {
	iface := &api.Interface{Name: ep.Name, HwAddr: ep.MAC.String(), Mtu: uint32(ep.MTU)}
	for _, a := range ep.Addrs {
		iface.IpAddresses = append(iface.IpAddresses, &api.IPAddress{Family: family(a.Family), Address: a.IP.String(), PrefixLen: uint32(a.PrefixLen)})
	}
	return iface
}

func guestRoute(r network.Route) *api.Route {
	out := &api.Route{Device: r.Device, Scope: uint32(r.Scope), Family: family(r.Family), Metric: uint32(r.Metric)}
	if r.Dst != nil {
		out.Dest = r.Dst.String()
	}
	if r.Gateway != nil {
		out.Gateway = r.Gateway.String()
	}
	if r.Src != nil {
		out.Source = r.Src.String()
	}
	return out
}

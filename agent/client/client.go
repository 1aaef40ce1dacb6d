// Package client is the host's typed client of the in-guest agent: it dials
// the agent over vsock, hybrid vsock or virtio-serial and turns wire errors
// back into containerd errdefs categories.
package client

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kasa-runtime/kasa/agent/api"
)

// Client talks to one agent. It is safe for concurrent use.
type Client struct {
	addr  string
	conn  net.Conn
	ttrpc *ttrpc.Client
	api   api.AgentServiceService
}

// Dial connects to the agent at addr (see dial for the address forms),
// retrying until ctx ends.
func Dial(ctx context.Context, addr string) (*Client, error) {
	conn, err := dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	tc := ttrpc.NewClient(conn)
	return &Client{addr: addr, conn: conn, ttrpc: tc, api: api.NewAgentServiceClient(tc)}, nil
}

// Close drops the connection; the agent keeps running.
func (c *Client) Close() error { return c.ttrpc.Close() }

// Address is where the client is connected.
func (c *Client) Address() string { return c.addr }

func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("agent %s: %w", op, errdefs.FromGRPC(err))
}

// Check asks whether the agent is serving.
func (c *Client) Check(ctx context.Context) error {
	resp, err := c.api.Check(ctx, &api.CheckRequest{})
	if err != nil {
		return wrap("Check", err)
	}
	if resp.GetStatus() != api.CheckResponse_SERVING {
		return fmt.Errorf("agent Check: status %s: %w", resp.GetStatus(), errdefs.ErrUnavailable)
	}
	return nil
}

// Version returns the agent's version and the API revision it implements.
func (c *Client) Version(ctx context.Context) (*api.VersionResponse, error) {
	resp, err := c.api.Version(ctx, &api.VersionRequest{})
	return resp, wrap("Version", err)
}

// GuestDetails describes the guest: kernel, memory, CPUs, features.
func (c *Client) GuestDetails(ctx context.Context) (*api.GetGuestDetailsResponse, error) {
	resp, err := c.api.GetGuestDetails(ctx, &api.GetGuestDetailsRequest{})
	return resp, wrap("GetGuestDetails", err)
}

// SetGuestDateTime sets the guest's wall clock.
func (c *Client) SetGuestDateTime(ctx context.Context, t time.Time) error {
	_, err := c.api.SetGuestDateTime(ctx, &api.SetGuestDateTimeRequest{Time: timestamppb.New(t)})
	return wrap("SetGuestDateTime", err)
}

// DestroySandbox asks the agent to power the guest off. The VM may go away
// before the reply arrives, so a closed connection counts as success.
func (c *Client) DestroySandbox(ctx context.Context) error {
	_, err := c.api.DestroySandbox(ctx, &api.DestroySandboxRequest{})
	if err != nil && isConnectionGone(err) {
		return nil
	}
	return wrap("DestroySandbox", err)
}

func isConnectionGone(err error) bool {
	return errdefs.IsUnavailable(errdefs.FromGRPC(err)) || err == ttrpc.ErrClosed
}

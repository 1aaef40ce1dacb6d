// Package client is the host's typed client of the in-guest agent: it speaks
// ttrpc on a stream a hypervisor driver opens to the guest (Connect) and
// turns wire errors back into containerd errdefs categories.
package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kasa-runtime/kasa/agent/api"
)

// Timeouts bound the agent's answers. The guest is not trusted to answer
// at all: a hung or hostile guest must not hold the host's caller, so every
// RPC that should answer promptly gets a deadline (the caller's, when it
// is earlier). The long polls (WaitProcess, ReadStdout, ReadStderr,
// WriteStdin, GetOOMEvent) wait for the guest's processes, for as long as
// those run or read: they have no deadline of their own, and their callers
// pass a context that is cancelled when the process or the sandbox goes.
type Timeouts struct {
	// Call bounds most RPCs.
	Call time.Duration
	// Start bounds the RPCs that create or start processes in the guest
	// (CreateSandbox, CreateContainer, StartContainer, ExecProcess), which
	// are slow under TCG.
	Start time.Duration
	// Signal bounds SignalProcess. The guest answers at once, but a signal
	// for a container's PID 1 younger than 15 s that has not installed its
	// handler yet waits for it (agent/internal/container/sighandler.go).
	Signal time.Duration
}

// DefaultTimeouts are a new client's.
var DefaultTimeouts = Timeouts{Call: 30 * time.Second, Start: 60 * time.Second, Signal: 30 * time.Second}

// ErrBadReply is a reply that breaks the protocol (a length larger than
// what was asked, a write that never makes progress): the guest is not
// trusted, and such a reply is an error, never a value to use.
var ErrBadReply = errors.New("agent reply out of bounds")

// Client talks to one agent. It is safe for concurrent use.
type Client struct {
	conn     net.Conn
	ttrpc    *ttrpc.Client
	api      api.AgentServiceService
	timeouts atomic.Pointer[Timeouts]
}

// SetTimeouts replaces the client's deadlines (tests shorten them).
func (c *Client) SetTimeouts(t Timeouts) { c.timeouts.Store(&t) }

func (c *Client) deadlines() Timeouts {
	if t := c.timeouts.Load(); t != nil {
		return *t
	}
	return DefaultTimeouts
}

// within returns ctx bounded by d from now, unless ctx ends earlier.
func within(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= d {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// call bounds a prompt RPC by the Call timeout.
func (c *Client) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return within(ctx, c.deadlines().Call)
}

// Connect connects to the agent through dial, retrying every failed attempt
// until ctx ends (see connect). An Observer on ctx (WithObserver) is told of
// the client's every RPC.
func Connect(ctx context.Context, dial DialFunc) (*Client, error) {
	conn, err := connect(ctx, dial)
	if err != nil {
		return nil, err
	}
	interceptor := boundReplies
	if o := observerFrom(ctx); o != nil {
		interceptor = observeRPCs(o, boundReplies)
	}
	tc := ttrpc.NewClient(conn, ttrpc.WithUnaryClientInterceptor(interceptor))
	return &Client{conn: conn, ttrpc: tc, api: api.NewAgentServiceClient(tc)}, nil
}

// Close drops the connection; the agent keeps running.
func (c *Client) Close() error { return c.ttrpc.Close() }

func wrap(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		// The caller's deadline or cancellation, not the agent's answer:
		// keep it recognisable (errdefs.IsDeadlineExceeded).
		return fmt.Errorf("agent %s: %w", op, err)
	case errors.Is(err, ttrpc.ErrClosed):
		return fmt.Errorf("agent %s: %w: %w", op, errdefs.ErrUnavailable, err)
	}
	return fmt.Errorf("agent %s: %w", op, errdefs.FromGRPC(err))
}

// Check asks whether the agent is serving.
func (c *Client) Check(ctx context.Context) error {
	ctx, cancel := c.call(ctx)
	defer cancel()
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
	ctx, cancel := c.call(ctx)
	defer cancel()
	resp, err := c.api.Version(ctx, &api.VersionRequest{})
	return resp, wrap("Version", err)
}

// GuestDetails describes the guest: kernel, memory, CPUs, features.
func (c *Client) GuestDetails(ctx context.Context) (*api.GetGuestDetailsResponse, error) {
	ctx, cancel := c.call(ctx)
	defer cancel()
	resp, err := c.api.GetGuestDetails(ctx, &api.GetGuestDetailsRequest{})
	return resp, wrap("GetGuestDetails", err)
}

// GuestMetrics returns the guest's metrics in the Prometheus text format
// (agent/api/metrics.go lists what the agent sends). The text is the
// guest's: a reply longer than api.MaxMetricsBytes is ErrBadReply, and the
// caller must check every family before it uses one.
func (c *Client) GuestMetrics(ctx context.Context) (string, error) {
	ctx, cancel := c.call(ctx)
	defer cancel()
	resp, err := c.api.GetMetrics(ctx, &api.GetMetricsRequest{})
	if err != nil {
		return "", wrap("GetMetrics", err)
	}
	if n := len(resp.GetPrometheusText()); n > api.MaxMetricsBytes {
		return "", fmt.Errorf("agent GetMetrics: %d bytes of text, more than %d: %w", n, api.MaxMetricsBytes, ErrBadReply)
	}
	return resp.GetPrometheusText(), nil
}

// SetGuestDateTime sets the guest's wall clock.
func (c *Client) SetGuestDateTime(ctx context.Context, t time.Time) error {
	ctx, cancel := c.call(ctx)
	defer cancel()
	_, err := c.api.SetGuestDateTime(ctx, &api.SetGuestDateTimeRequest{Time: timestamppb.New(t)})
	return wrap("SetGuestDateTime", err)
}

// DestroySandbox asks the agent to power the guest off. The VM may go away
// before the reply arrives, so a closed connection counts as success.
func (c *Client) DestroySandbox(ctx context.Context) error {
	ctx, cancel := c.call(ctx)
	defer cancel()
	_, err := c.api.DestroySandbox(ctx, &api.DestroySandboxRequest{})
	if err != nil && isConnectionGone(err) {
		return nil
	}
	return wrap("DestroySandbox", err)
}

func isConnectionGone(err error) bool {
	return errdefs.IsUnavailable(errdefs.FromGRPC(err)) || err == ttrpc.ErrClosed
}

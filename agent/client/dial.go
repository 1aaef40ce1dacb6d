package client

import (
	"context"
	"fmt"
	"net"
	"time"
)

// retryInterval paces connection attempts while the guest is still booting.
const retryInterval = 20 * time.Millisecond

// DialFunc opens one stream to the agent, bounded by ctx: typically a
// driver's hypervisor.Hypervisor.DialGuest on the agent's port. The client
// knows no transport; the driver does.
type DialFunc func(ctx context.Context) (net.Conn, error)

// connect calls dial until it succeeds or ctx ends, so that it can be
// called as soon as the VM starts: a guest still booting refuses or does
// not answer, and the next attempt follows after retryInterval.
func connect(ctx context.Context, dial DialFunc) (net.Conn, error) {
	for {
		c, err := dial(ctx)
		if err == nil {
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("agent not reachable: %w (last error: %v)", ctx.Err(), err)
		case <-time.After(retryInterval):
		}
	}
}

package shimv2

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/hypervisor"
)

// standInVM is a hypervisor without a VM, for the sandboxes of
// virtcontainers.SandboxWithAgentForTest: the agent is a fake on a unix
// socket, and stop ends the "VM" as if the guest had died.
type standInVM struct {
	dial func(context.Context) (net.Conn, error)
	once sync.Once
	done chan struct{}
	err  error
}

var _ hypervisor.Hypervisor = (*standInVM)(nil)

// newStandInVM is a stand-in whose agent is the one dial reaches (an
// agenttest fake's Dial).
func newStandInVM(dial func(context.Context) (net.Conn, error)) *standInVM {
	return &standInVM{dial: dial, done: make(chan struct{})}
}

func (v *standInVM) stop(err error) {
	v.once.Do(func() { v.err = err; close(v.done) })
}

// die ends the stand-in as a VM whose guest died.
func (v *standInVM) die() { v.stop(errors.New("stand-in VM stopped by the test")) }

func (v *standInVM) CreateVM(context.Context, hypervisor.VMConfig) error { return nil }
func (v *standInVM) StartVM(context.Context) error                       { return nil }
func (v *standInVM) StopVM(context.Context) error                        { v.stop(nil); return nil }
func (v *standInVM) Done() <-chan struct{}                               { return v.done }
func (v *standInVM) ExitError() error                                    { return v.err }
func (v *standInVM) PauseVM(context.Context) error                       { return nil }
func (v *standInVM) ResumeVM(context.Context) error                      { return nil }
func (v *standInVM) DialGuest(ctx context.Context, port uint32) (net.Conn, error) {
	if port != api.AgentVsockPort {
		return nil, fmt.Errorf("stand-in VM: guest port %d: %w", port, hypervisor.ErrNotSupported)
	}
	return v.dial(ctx)
}
func (v *standInVM) ConsolePath() string { return "" }
func (v *standInVM) PID() int            { return 0 }

package virtcontainers

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/kasa-runtime/kasa/agent/client"
	"github.com/kasa-runtime/kasa/hypervisor"
	"github.com/kasa-runtime/kasa/virtcontainers/fsshare"
	"github.com/kasa-runtime/kasa/virtcontainers/podcgroup"
)

// SandboxWithAgentForTest returns a sandbox whose VM is a stand-in (no
// hypervisor process: Stop or StopStandIn ends it) and whose agent is the
// one at agentAddr, typically agent/agenttest's fake, with the given
// deadlines. Its shared directory is under dir; its state goes under
// SandboxStateRoot as a real sandbox's. It is for tests of the layers
// above, such as the shim's handling of a guest that misbehaves.
func SandboxWithAgentForTest(ctx context.Context, id, agentAddr, dir string, timeouts client.Timeouts) (*Sandbox, error) {
	if err := validID(id); err != nil {
		return nil, err
	}
	c, err := client.Dial(ctx, agentAddr)
	if err != nil {
		return nil, err
	}
	c.SetTimeouts(timeouts)
	share := fsshare.Open(id, 0)
	share.HostDir = filepath.Join(dir, "shared", id)
	if err := os.MkdirAll(share.HostDir, 0o700); err != nil {
		c.Close()
		return nil, err
	}
	hv := &standInVM{addr: agentAddr, done: make(chan struct{})}
	st := &sandboxState{ID: id, Hypervisor: "stand-in", SharedDir: share.HostDir}
	if err := saveState(st); err != nil {
		c.Close()
		return nil, err
	}
	// No pod cgroup: an empty group, which Stop deletes as nothing.
	return &Sandbox{ID: id, vm: &VM{ID: id, hv: hv, Agent: c}, agent: c, share: share, shared: true,
		cgroup: &podcgroup.Group{}, containers: map[string]struct{}{}, state: st}, nil
}

// StopStandIn ends a stand-in VM as if the guest had died; it is for
// sandboxes of SandboxWithAgentForTest.
func (s *Sandbox) StopStandIn() error {
	hv, ok := s.vm.hv.(*standInVM)
	if !ok {
		return fmt.Errorf("sandbox %s has a real VM", s.ID)
	}
	hv.stop(fmt.Errorf("stand-in VM stopped by the test"))
	return nil
}

// standInVM is a hypervisor without a VM, for SandboxWithAgentForTest.
type standInVM struct {
	addr string
	once sync.Once
	done chan struct{}
	err  error
}

var _ hypervisor.Hypervisor = (*standInVM)(nil)

func (v *standInVM) stop(err error) {
	v.once.Do(func() { v.err = err; close(v.done) })
}

func (v *standInVM) CreateVM(context.Context, hypervisor.VMConfig) error { return nil }
func (v *standInVM) StartVM(context.Context) error                       { return nil }
func (v *standInVM) StopVM(context.Context) error                        { v.stop(nil); return nil }
func (v *standInVM) Done() <-chan struct{}                               { return v.done }
func (v *standInVM) ExitError() error                                    { return v.err }
func (v *standInVM) PauseVM(context.Context) error                       { return nil }
func (v *standInVM) ResumeVM(context.Context) error                      { return nil }
func (v *standInVM) AgentAddress() string                                { return v.addr }
func (v *standInVM) ConsolePath() string                                 { return "" }
func (v *standInVM) PID() int                                            { return 0 }

package virtcontainers

import (
	"context"
	"os"
	"path/filepath"

	"github.com/kasa-runtime/kasa/agent/client"
	"github.com/kasa-runtime/kasa/hypervisor"
	"github.com/kasa-runtime/kasa/virtcontainers/fsshare"
	"github.com/kasa-runtime/kasa/virtcontainers/podcgroup"
)

// SandboxWithAgentForTest returns a sandbox whose VM is hv, an already
// running driver the caller provides (a test's stand-in without a
// hypervisor process), and whose agent is the one hv.DialGuest reaches,
// typically agent/agenttest's fake, with the given deadlines. Its shared directory is
// under dir; its state goes under SandboxStateRoot as a real sandbox's. It
// is the seam for tests of the layers above, such as the shim's handling of
// a guest that misbehaves; the stand-ins themselves live in those tests.
func SandboxWithAgentForTest(ctx context.Context, id, dir string, timeouts client.Timeouts, hv hypervisor.Hypervisor) (*Sandbox, error) {
	if err := validID(id); err != nil {
		return nil, err
	}
	vm := &VM{ID: id, hv: hv}
	c, err := client.Connect(ctx, vm.agentDialer())
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
	st := &sandboxState{ID: id, Hypervisor: "stand-in", SharedDir: share.HostDir}
	if err := saveState(st); err != nil {
		c.Close()
		return nil, err
	}
	// No pod cgroup: an empty group, which Stop deletes as nothing.
	vm.Agent = c
	return &Sandbox{ID: id, vm: vm, agent: c, share: share, shared: true,
		cgroup: &podcgroup.Group{}, containers: map[string]struct{}{}, state: st}, nil
}

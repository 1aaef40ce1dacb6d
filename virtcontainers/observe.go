package virtcontainers

import (
	"context"
	"fmt"

	"github.com/containerd/containerd/errdefs"

	"github.com/kasa-runtime/kasa/hypervisor"
)

// HostProcess is a host process that runs for a sandbox: its VMM or a
// daemon of it. Name is one of "qemu", "virtiofsd".
type HostProcess struct {
	Name string
	PID  int
}

// HostProcesses lists the sandbox's host processes that are running: the
// VMM and virtiofsd. Each is a child of this process, so its pid is its
// own until this process reaps it.
func (s *Sandbox) HostProcesses() []HostProcess {
	if s.isStopped() {
		return nil
	}
	var out []HostProcess
	select {
	case <-s.vm.Done():
	default:
		if pid := s.vm.PID(); pid > 0 {
			out = append(out, HostProcess{Name: "qemu", PID: pid})
		}
	}
	if d := s.virtiofsd; d != nil {
		select {
		case <-d.Done():
		default:
			out = append(out, HostProcess{Name: "virtiofsd", PID: d.PID()})
		}
	}
	return out
}

// VsockStats are the counters of the VM's vsock backend, when it runs in
// this process (vhost-user-vsock).
func (s *Sandbox) VsockStats() (hypervisor.VsockStats, bool) {
	v, ok := s.vm.hv.(hypervisor.VsockStatser)
	if !ok || s.isStopped() {
		return hypervisor.VsockStats{}, false
	}
	return v.VsockStats()
}

// GuestMetrics asks the agent for the guest's metrics (agent/api/metrics.go).
// The text is the guest's, to be checked before any use.
func (s *Sandbox) GuestMetrics(ctx context.Context) (string, error) {
	g, ok := s.agent.(interface {
		GuestMetrics(context.Context) (string, error)
	})
	if !ok {
		return "", fmt.Errorf("sandbox %s: guest metrics: %w", s.ID, errdefs.ErrNotImplemented)
	}
	if s.isStopped() || s.vmGone() {
		return "", fmt.Errorf("sandbox %s: guest metrics: VM not running: %w", s.ID, errdefs.ErrUnavailable)
	}
	return g.GuestMetrics(ctx)
}

func (s *Sandbox) isStopped() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopped
}

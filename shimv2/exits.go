package shimv2

// What comes back from the sandbox: the VM's death, OOM events and
// process exits, each checked against the shim's own table before it is
// published.

import (
	"context"
	"syscall"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/protobuf"
	"github.com/containerd/containerd/runtime"
	"github.com/containerd/log"

	"github.com/kasa-runtime/kasa/virtcontainers"
)

// watchSandbox turns a VM that died into an exit of every process, and
// says why in the log.
func (s *service) watchSandbox(sb *virtcontainers.Sandbox) {
	<-sb.Done()
	s.mu.Lock()
	current := s.sandbox == sb
	cs := make([]*container, 0, len(s.containers))
	for _, c := range s.containers {
		cs = append(cs, c)
	}
	s.mu.Unlock()
	if !current || len(cs) == 0 {
		return
	}
	s.mu.Lock()
	status := uint32(vmDeathExitStatus)
	if s.vmKilled || s.sandboxExiting {
		status = 128 + uint32(syscall.SIGKILL) // killed with their pod
	}
	sandboxExiting := s.sandboxExiting
	s.mu.Unlock()
	if sandboxExiting {
		log.G(s.ctx).WithField("sandbox", sb.ID).Infof("sandbox VM stopped after its sandbox container exited (%s)", sb.ExitReason())
	} else {
		log.G(s.ctx).WithField("sandbox", sb.ID).Errorf("sandbox VM exited (%s): reporting its %d container(s) dead", sb.ExitReason(), len(cs))
	}
	now := time.Now()
	for _, c := range cs {
		for _, p := range c.all() {
			if sandboxExiting && p.isInit() && c.id == sb.ID {
				continue // waitExit reports it with the guest's status
			}
			if p.setExited(status, now) {
				s.publishExit(p)
			}
		}
	}
}

// endsSandbox reports whether the exit of container id's init ends the
// VM: id is the sandbox's own container. It also tells watchSandbox that
// this exit is reported by waitExit, with the guest's status.
func (s *service) endsSandbox(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sandbox == nil || id != s.sandboxID {
		return false
	}
	s.sandboxExiting = true
	return true
}

// forwardOOM publishes the guest's OOM kills. The container id comes from
// the guest: only ids of this shim's own containers (or of ones it deleted
// a moment ago) reach containerd; any other, which would mark another
// container of the namespace OOM-killed, is dropped with a rate-limited
// warning.
func (s *service) forwardOOM(sb *virtcontainers.Sandbox) {
	for {
		id, err := sb.NextOOM(s.ctx)
		if err != nil {
			select {
			case <-sb.Done():
				return
			case <-s.ctx.Done():
				return
			case <-time.After(time.Second):
				continue
			}
		}
		if !s.ownContainer(id) {
			s.warnUnknownID(sb.ID, "OOM event", id)
			// A guest that answers at once with made-up ids must not
			// spin this loop.
			select {
			case <-sb.Done():
				return
			case <-s.ctx.Done():
				return
			case <-time.After(unknownIDPause):
			}
			continue
		}
		s.metricsNow().oom()
		s.publish(runtime.TaskOOMEventTopic, &eventstypes.TaskOOM{ContainerID: id})
	}
}

// ownContainer reports whether id is a container of this shim's sandbox,
// or one it deleted lately.
func (s *service) ownContainer(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.containers[id]; ok {
		return true
	}
	return s.removed.has(id, time.Now())
}

// warnUnknownID logs, at most once per unknownIDWarnEvery, that the guest
// named an id this shim does not know.
func (s *service) warnUnknownID(sandboxID, what, id string) {
	if ok, dropped := s.unknownIDs.allow(time.Now()); ok {
		if len(id) > 128 {
			id = id[:128] + "…"
		}
		log.G(s.ctx).WithField("sandbox", sandboxID).WithField("id", id).WithField("dropped_since_last_warning", dropped).
			Warnf("guest named a container that is not this sandbox's in an %s: dropped", what)
	}
}

// forgetFailedExec makes the agent forget an exec that it started but
// whose stdio the shim could not set up, once the SIGKILL took effect.
func (s *service) forgetFailedExec(sb *virtcontainers.Sandbox, p *process) {
	ctx, cancel := context.WithTimeout(s.ctx, drainTimeout)
	defer cancel()
	if _, _, err := sb.Wait(ctx, p.containerID, p.execID); err != nil {
		return
	}
	if err := sb.RemoveProcess(context.WithoutCancel(ctx), p.containerID, p.execID); err != nil && !errdefs.IsNotFound(err) {
		log.G(s.ctx).WithError(err).WithField("container", p.containerID).WithField("exec", p.execID).Warn("agent did not forget a failed exec")
	}
}

func (s *service) publishExit(p *process) {
	_, status, at := p.snapshot()
	if p.isInit() {
		s.metricsNow().exit(status)
	}
	s.publish(runtime.TaskExitEventTopic, &eventstypes.TaskExit{
		ContainerID: p.containerID, ID: p.execID, Pid: s.pid(), ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at),
	})
}

// waitExit follows a started process to its end: the guest's exit status,
// then all its output, then the TaskExit event.
func (s *service) waitExit(sb *virtcontainers.Sandbox, p *process) {
	status, at, err := sb.Wait(p.ctx, p.containerID, p.execID)
	if err != nil {
		// The agent's connection usually breaks a moment before the VM's
		// process is reaped: let watchSandbox report a dead VM.
		select {
		case <-sb.Done():
			return
		case <-time.After(time.Second):
		}
		log.G(s.ctx).WithError(err).WithField("container", p.containerID).WithField("exec", p.execID).Error("wait for process")
		status, at = vmDeathExitStatus, time.Now()
	}
	if !p.io.waitOutputs(drainTimeout) {
		log.G(s.ctx).WithField("container", p.containerID).WithField("exec", p.execID).Warn("output still open after exit; not waiting longer")
	}
	if p.isInit() && s.endsSandbox(p.containerID) {
		// The sandbox container's init is the pod's life: once it exited
		// (CRI-O's StopPodSandbox kills it and deletes it only at
		// RemovePodSandbox; containerd deletes it at once) the VM has
		// nothing left to run, so it stops before the exit is reported
		// and a stopped pod holds no VM.
		if err := s.stopSandbox(s.ctx); err != nil {
			log.G(s.ctx).WithError(err).WithField("sandbox", p.containerID).Warn("stopping the VM of an exited sandbox container")
		}
	}
	if p.setExited(uint32(status), at) {
		s.publishExit(p)
	}
}

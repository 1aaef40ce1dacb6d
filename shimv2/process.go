package shimv2

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// allowed lists the legal moves of a process's life.
var allowed = map[task.Status][]task.Status{
	task.Status_CREATED: {task.Status_RUNNING, task.Status_STOPPED},
	task.Status_RUNNING: {task.Status_PAUSED, task.Status_STOPPED},
	task.Status_PAUSED:  {task.Status_RUNNING, task.Status_STOPPED},
	task.Status_STOPPED: nil,
}

// process is a container's init or an exec'd process, as the shim tracks it.
type process struct {
	containerID string
	execID      string // the container id for init
	stdio       stdioPaths
	spec        *specs.Process // exec'd processes: what to run
	// ctx bounds everything that waits on the guest for the process (its
	// exit, its stdio); cancel ends it at the process's Delete.
	ctx    context.Context
	cancel context.CancelFunc

	mu         sync.Mutex
	status     task.Status
	exitStatus uint32
	exitedAt   time.Time
	exited     chan struct{} // closed on STOPPED
	io         *processIO
}

func newProcess(ctx context.Context, containerID, execID string, stdio stdioPaths) *process {
	ctx, cancel := context.WithCancel(ctx)
	return &process{containerID: containerID, execID: execID, stdio: stdio, ctx: ctx, cancel: cancel, status: task.Status_CREATED, exited: make(chan struct{})}
}

func (p *process) isInit() bool { return p.execID == p.containerID }

// transition moves the process to a new status or says why it cannot.
func (p *process) transition(to task.Status) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.transitionLocked(to)
}

func (p *process) transitionLocked(to task.Status) error {
	for _, ok := range allowed[p.status] {
		if ok == to {
			p.status = to
			return nil
		}
	}
	return fmt.Errorf("invalid state transition %q to %q: %w", p.status, to, errdefs.ErrFailedPrecondition)
}

// setExited records the exit once; later calls are ignored.
func (p *process) setExited(status uint32, at time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.status == task.Status_STOPPED {
		return false
	}
	p.status = task.Status_STOPPED
	p.exitStatus = status
	p.exitedAt = at
	close(p.exited)
	return true
}

func (p *process) snapshot() (task.Status, uint32, time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status, p.exitStatus, p.exitedAt
}

// container is one container of the sandbox, with its processes.
type container struct {
	id     string
	bundle string
	spec   *specs.Spec
	init   *process

	mu    sync.Mutex
	execs map[string]*process
}

func (c *container) process(execID string) (*process, error) {
	if execID == "" || execID == c.id {
		return c.init, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.execs[execID]
	if !ok {
		return nil, fmt.Errorf("exec %s of container %s: %w", execID, c.id, errdefs.ErrNotFound)
	}
	return p, nil
}

func (c *container) all() []*process {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := []*process{c.init}
	for _, p := range c.execs {
		out = append(out, p)
	}
	return out
}

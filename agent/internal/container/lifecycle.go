package container

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/kasa-runtime/kasa/agent/api"
)

// destroyAllWait bounds how long DestroyAll waits for each container.
const destroyAllWait = time.Second

// Update changes the cgroup resources of a container that has not stopped.
func (m *Manager) Update(ctx context.Context, id string, res *api.LinuxResources) error {
	c, err := m.get(id)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if st := c.status(); st == statusStopped {
		return fmt.Errorf("update container %s: it is %s: %w", id, st, errdefs.ErrFailedPrecondition)
	}
	// Work on copies: libcontainer keeps the config it is given.
	cfg := c.lc.Config()
	cg := *cfg.Cgroups
	r := *cg.Resources
	cg.Resources, cfg.Cgroups = &r, &cg
	if err := applyUpdate(&r, res); err != nil {
		return fmt.Errorf("update container %s: %w", id, err)
	}
	r.SkipDevices = true // as runc update: device rules stay as created
	err = c.lc.Set(cfg)
	r.SkipDevices = false // libcontainer refuses to start processes with it set
	if err != nil {
		return fmt.Errorf("update container %s: %w", id, err)
	}
	return nil
}

// Stats returns the cgroup statistics of a container and the sandbox's
// network counters.
func (m *Manager) Stats(ctx context.Context, id string) (*api.StatsContainerResponse, error) {
	c, err := m.get(id)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s, err := c.lc.Stats()
	if err != nil {
		return nil, fmt.Errorf("stats of container %s: %w", id, err)
	}
	events, _ := readKeyValues(filepath.Join(c.cgroupDir, "memory.events"))
	return &api.StatsContainerResponse{
		CgroupStats:  cgroupStats(s.CgroupStats, events),
		NetworkStats: networkStats(m.cfg.SysRoot),
	}, nil
}

// Pause freezes a running container.
func (m *Manager) Pause(ctx context.Context, id string) error {
	return m.step(id, statusPaused, "pause", func(c *Container) error { return c.lc.Pause() })
}

// Resume thaws a paused container.
func (m *Manager) Resume(ctx context.Context, id string) error {
	return m.step(id, statusRunning, "resume", func(c *Container) error { return c.lc.Resume() })
}

// step moves container id to state to by running op, under the container's
// lock; if op fails the container stays in the state it was in.
func (m *Manager) step(id string, to status, verb string, op func(*Container) error) error {
	c, err := m.get(id)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	from := c.state
	if err := c.transition(to); err != nil {
		return err
	}
	if err := op(c); err != nil {
		c.state = from
		return fmt.Errorf("%s container %s: %w", verb, id, err)
	}
	return nil
}

// Remove kills whatever runs in a container, destroys it and unmounts its
// storages. timeout (0: none of its own) bounds the wait for its processes.
func (m *Manager) Remove(ctx context.Context, id string, timeout time.Duration) error {
	c, err := m.get(id)
	if err != nil {
		return err
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.remove {
		return fmt.Errorf("container %q: %w", id, errdefs.ErrNotFound)
	}
	if err := c.kill(ctx); err != nil {
		return err
	}
	if err := c.destroy(); err != nil {
		return err
	}
	c.remove = true
	m.mu.Lock()
	delete(m.containers, id)
	if m.sandboxContainer == id {
		m.sandboxContainer = ""
	}
	if m.pidnsHolder == id {
		m.pidnsHolder = ""
	}
	m.mu.Unlock()
	log.G(ctx).WithField("container", id).Info("container removed")
	return nil
}

// DestroyAll removes every container, for DestroySandbox.
func (m *Manager) DestroyAll(ctx context.Context) error {
	m.mu.Lock()
	ids := make([]string, 0, len(m.containers))
	for id := range m.containers {
		ids = append(ids, id)
	}
	m.mu.Unlock()
	var errs []error
	for _, id := range ids {
		if err := m.Remove(ctx, id, destroyAllWait); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// WriteStdin writes to a process's stdin.
func (m *Manager) WriteStdin(ctx context.Context, id, execID string, data []byte) (int, error) {
	p, err := m.getProcess(id, execID)
	if err != nil {
		return 0, err
	}
	return p.writeStdin(ctx, data)
}

// ReadOutput reads the next chunk of a process's stdout, or stderr.
func (m *Manager) ReadOutput(ctx context.Context, id, execID string, stderr bool, max int) ([]byte, bool, error) {
	p, err := m.getProcess(id, execID)
	if err != nil {
		return nil, false, err
	}
	s := p.stdout
	if stderr {
		s = p.stderr
	}
	return s.read(ctx, max)
}

// CloseStdin closes a process's stdin.
func (m *Manager) CloseStdin(ctx context.Context, id, execID string) error {
	p, err := m.getProcess(id, execID)
	if err != nil {
		return err
	}
	return p.closeStdin()
}

// ResizeTerminal sets the window size of a process's terminal.
func (m *Manager) ResizeTerminal(ctx context.Context, id, execID string, rows, cols uint32) error {
	if rows > 0xffff || cols > 0xffff {
		return fmt.Errorf("terminal size %dx%d: at most 65535 each: %w", cols, rows, errdefs.ErrInvalidArgument)
	}
	p, err := m.getProcess(id, execID)
	if err != nil {
		return err
	}
	return p.resize(rows, cols)
}

// NextOOM waits for the next OOM kill in any container and returns the
// container's id.
func (m *Manager) NextOOM(ctx context.Context) (string, error) {
	return m.oom.next(ctx)
}

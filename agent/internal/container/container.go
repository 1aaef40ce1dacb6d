package container

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/errdefs"
	"github.com/opencontainers/runc/libcontainer"
	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/agent/api"
)

// status is where a container is in its lifecycle.
type status string

const (
	statusCreated status = "created"
	statusRunning status = "running"
	statusPaused  status = "paused"
	statusStopped status = "stopped"
)

// transitions lists, for each status, the statuses a request may move a
// container to. stopped is reached by the init's exit, never by a request.
var transitions = map[status][]status{
	statusCreated: {statusRunning},
	statusRunning: {statusPaused},
	statusPaused:  {statusRunning},
}

// Container is one container of the sandbox.
type Container struct {
	id        string
	lc        *libcontainer.Container
	cgroupDir string
	init      *Process
	oom       *oomWatcher
	// releaseStorages unmounts what CreateContainer mounted for it.
	releaseStorages func() error

	// mu serialises the requests that change the container.
	mu     sync.Mutex
	state  status
	execs  map[string]*Process
	remove bool // RemoveContainer is under way or done
}

// status is the container's state; an exited init means stopped whatever
// was recorded. c.mu must be held.
func (c *Container) status() status {
	if c.init.hasExited() {
		return statusStopped
	}
	return c.state
}

// transition moves the container to status to, or says why it cannot.
// c.mu must be held.
func (c *Container) transition(to status) error {
	from := c.status()
	for _, s := range transitions[from] {
		if s == to {
			c.state = to
			return nil
		}
	}
	return fmt.Errorf("container %s: invalid state transition %q to %q: %w", c.id, from, to, errdefs.ErrFailedPrecondition)
}

// process finds a process by exec id; "" and the init's exec id name the
// init. c.mu must be held.
func (c *Container) process(execID string) (*Process, error) {
	if execID == "" || execID == c.init.execID {
		return c.init, nil
	}
	if p, ok := c.execs[execID]; ok {
		return p, nil
	}
	return nil, fmt.Errorf("container %s has no process %q: %w", c.id, execID, errdefs.ErrNotFound)
}

// signal sends sig to one process, or to every process of the container.
// A signal for a running container's init waits for its handler first
// (awaitHandler), without holding c.mu.
func (c *Container) signal(ctx context.Context, execID string, sig unix.Signal, all bool) error {
	if !all {
		c.mu.Lock()
		p, err := c.process(execID)
		running := err == nil && p == c.init && c.status() == statusRunning
		c.mu.Unlock()
		if running {
			awaitHandler(ctx, p.pid, sig, handlerWindow)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if all {
		return c.signalAll(sig)
	}
	p, err := c.process(execID)
	if err != nil {
		return err
	}
	if p != c.init {
		return p.signal(sig)
	}
	if p.hasExited() {
		return fmt.Errorf("init of container %s already finished: %w", c.id, errdefs.ErrNotFound)
	}
	if err := c.lc.Signal(sig); err != nil {
		if errors.Is(err, libcontainer.ErrNotRunning) || errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("init of container %s already finished: %w", c.id, errdefs.ErrNotFound)
		}
		return fmt.Errorf("signal container %s: %w", c.id, err)
	}
	return nil
}

// signalAll signals every process in the container's cgroup. SIGKILL goes
// through cgroup.kill, which also reaches processes forked meanwhile and
// frozen ones.
func (c *Container) signalAll(sig unix.Signal) error {
	if sig == unix.SIGKILL {
		err := os.WriteFile(filepath.Join(c.cgroupDir, "cgroup.kill"), []byte("1"), 0)
		if err == nil {
			return nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("kill container %s: %w", c.id, err)
		}
	}
	pids, err := c.lc.Processes()
	if err != nil {
		return fmt.Errorf("list processes of container %s: %w", c.id, err)
	}
	for _, pid := range pids {
		if err := unix.Kill(pid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("signal pid %d of container %s: %w", pid, c.id, err)
		}
	}
	return nil
}

// processes lists the guest pids of the container with the exec ids of the
// processes the agent started.
func (c *Container) processes() ([]*api.ProcessInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	pids, err := c.lc.Processes()
	if err != nil {
		return nil, fmt.Errorf("list processes of container %s: %w", c.id, err)
	}
	byPid := map[int]string{}
	for _, p := range append(c.execList(), c.init) {
		if !p.hasExited() {
			byPid[p.pid] = p.execID
		}
	}
	sort.Ints(pids)
	out := make([]*api.ProcessInfo, 0, len(pids))
	for _, pid := range pids {
		out = append(out, &api.ProcessInfo{Pid: uint32(pid), ExecId: byPid[pid]})
	}
	return out, nil
}

func (c *Container) execList() []*Process {
	out := make([]*Process, 0, len(c.execs))
	for _, p := range c.execs {
		out = append(out, p)
	}
	return out
}

// waitEmpty waits until every process the agent started has exited and the
// cgroup holds no process any more.
func (c *Container) waitEmpty(ctx context.Context) error {
	for _, p := range append(c.execList(), c.init) {
		if _, _, err := p.wait(ctx); err != nil {
			return fmt.Errorf("container %s: process %q did not exit after SIGKILL: %w", c.id, p.execID, err)
		}
	}
	for {
		b, err := os.ReadFile(filepath.Join(c.cgroupDir, "cgroup.procs"))
		if err != nil || len(strings.TrimSpace(string(b))) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("container %s: cgroup still has processes %s after SIGKILL: %w", c.id, strings.Fields(string(b)), ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// kill stops everything in the container and waits until it is gone.
func (c *Container) kill(ctx context.Context) error {
	if c.init.hasExited() && len(c.liveExecs()) == 0 {
		return c.waitEmpty(ctx)
	}
	// SIGKILL to the init of a PID namespace kills the whole namespace; the
	// cgroup-wide kill also covers a shared PID namespace.
	if !c.init.hasExited() {
		if err := c.lc.Signal(unix.SIGKILL); err != nil && !errors.Is(err, libcontainer.ErrNotRunning) && !errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("kill container %s: %w", c.id, err)
		}
	}
	if err := c.signalAll(unix.SIGKILL); err != nil {
		return err
	}
	return c.waitEmpty(ctx)
}

func (c *Container) liveExecs() []*Process {
	var out []*Process
	for _, p := range c.execs {
		if !p.hasExited() {
			out = append(out, p)
		}
	}
	return out
}

// destroy removes the container's state, cgroup, stdio and storages; its
// processes must be gone.
func (c *Container) destroy() error {
	if c.oom != nil {
		c.oom.stop() // before the cgroup goes, to count a last kill
		c.oom = nil
	}
	if err := c.lc.Destroy(); err != nil {
		return fmt.Errorf("destroy container %s: %w", c.id, err)
	}
	for _, p := range append(c.execList(), c.init) {
		p.release()
	}
	if c.releaseStorages != nil {
		if err := c.releaseStorages(); err != nil {
			return fmt.Errorf("container %s: %w", c.id, err)
		}
		c.releaseStorages = nil
	}
	return nil
}

// pidnsPath is the PID namespace of the container's init, for containers
// that share it.
func (c *Container) pidnsPath() string {
	if c.init.hasExited() {
		return ""
	}
	return "/proc/" + strconv.Itoa(c.init.pid) + "/ns/pid"
}

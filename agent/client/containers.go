package client

import (
	"context"
	"fmt"
	"time"

	"github.com/kasa-runtime/kasa/agent/api"
)

// MaxReadLen is the most a ReadStdout or ReadStderr reply may carry: what
// was asked, or with max 0 the agent's cap for its default.
const MaxReadLen = 1 << 20

// CreateSandbox sets up the pod-wide state of the guest: hostname, DNS,
// kernel modules, sandbox storages.
func (c *Client) CreateSandbox(ctx context.Context, req *api.CreateSandboxRequest) error {
	ctx, cancel := within(ctx, c.deadlines().Start)
	defer cancel()
	_, err := c.api.CreateSandbox(ctx, req)
	return wrap("CreateSandbox", err)
}

// CreateContainer creates a container whose init waits for StartContainer.
func (c *Client) CreateContainer(ctx context.Context, req *api.CreateContainerRequest) error {
	ctx, cancel := within(ctx, c.deadlines().Start)
	defer cancel()
	_, err := c.api.CreateContainer(ctx, req)
	return wrap("CreateContainer", err)
}

// StartContainer starts the init of a created container.
func (c *Client) StartContainer(ctx context.Context, containerID string) error {
	ctx, cancel := within(ctx, c.deadlines().Start)
	defer cancel()
	_, err := c.api.StartContainer(ctx, &api.StartContainerRequest{ContainerId: containerID})
	return wrap("StartContainer", err)
}

// RemoveContainer kills what still runs in a container and removes it;
// timeoutSeconds (0: none) bounds the agent's wait for its processes, and
// the call waits that long plus the Call timeout for the answer.
func (c *Client) RemoveContainer(ctx context.Context, containerID string, timeoutSeconds uint32) error {
	ctx, cancel := within(ctx, time.Duration(timeoutSeconds)*time.Second+c.deadlines().Call)
	defer cancel()
	_, err := c.api.RemoveContainer(ctx, &api.RemoveContainerRequest{ContainerId: containerID, TimeoutSeconds: timeoutSeconds})
	return wrap("RemoveContainer", err)
}

// ExecProcess starts an additional process in a running container.
func (c *Client) ExecProcess(ctx context.Context, req *api.ExecProcessRequest) error {
	ctx, cancel := within(ctx, c.deadlines().Start)
	defer cancel()
	_, err := c.api.ExecProcess(ctx, req)
	return wrap("ExecProcess", err)
}

// SignalProcess sends a Linux signal to a process, or with all to every
// process of the container.
func (c *Client) SignalProcess(ctx context.Context, containerID, execID string, signal uint32, all bool) error {
	ctx, cancel := within(ctx, c.deadlines().Signal)
	defer cancel()
	_, err := c.api.SignalProcess(ctx, &api.SignalProcessRequest{ContainerId: containerID, ExecId: execID, Signal: signal, All: all})
	return wrap("SignalProcess", err)
}

// WaitProcess blocks until a process exits and returns its status. It is a
// long poll without a deadline of its own: ctx must end when the caller
// stops caring (the process is deleted, the sandbox stops).
func (c *Client) WaitProcess(ctx context.Context, containerID, execID string) (*api.WaitProcessResponse, error) {
	resp, err := c.api.WaitProcess(ctx, &api.WaitProcessRequest{ContainerId: containerID, ExecId: execID})
	return resp, wrap("WaitProcess", err)
}

// RemoveProcess makes the agent forget an exec'd process that exited and
// whose exit was collected. An agent older than API revision 3 lacks it
// (NotImplemented): it then keeps the record until the container goes.
func (c *Client) RemoveProcess(ctx context.Context, containerID, execID string) error {
	ctx, cancel := c.call(ctx)
	defer cancel()
	_, err := c.api.RemoveProcess(ctx, &api.RemoveProcessRequest{ContainerId: containerID, ExecId: execID})
	return wrap("RemoveProcess", err)
}

// ListProcesses lists the guest pids of a container's processes.
func (c *Client) ListProcesses(ctx context.Context, containerID string) ([]*api.ProcessInfo, error) {
	ctx, cancel := c.call(ctx)
	defer cancel()
	resp, err := c.api.ListProcesses(ctx, &api.ListProcessesRequest{ContainerId: containerID})
	if err != nil {
		return nil, wrap("ListProcesses", err)
	}
	return resp.GetProcesses(), nil
}

// UpdateContainer changes a container's cgroup resources.
func (c *Client) UpdateContainer(ctx context.Context, containerID string, res *api.LinuxResources) error {
	ctx, cancel := c.call(ctx)
	defer cancel()
	_, err := c.api.UpdateContainer(ctx, &api.UpdateContainerRequest{ContainerId: containerID, Resources: res})
	return wrap("UpdateContainer", err)
}

// StatsContainer returns a container's cgroup and the sandbox's network
// statistics.
func (c *Client) StatsContainer(ctx context.Context, containerID string) (*api.StatsContainerResponse, error) {
	ctx, cancel := c.call(ctx)
	defer cancel()
	resp, err := c.api.StatsContainer(ctx, &api.StatsContainerRequest{ContainerId: containerID})
	return resp, wrap("StatsContainer", err)
}

// PauseContainer freezes a container.
func (c *Client) PauseContainer(ctx context.Context, containerID string) error {
	ctx, cancel := c.call(ctx)
	defer cancel()
	_, err := c.api.PauseContainer(ctx, &api.PauseContainerRequest{ContainerId: containerID})
	return wrap("PauseContainer", err)
}

// ResumeContainer thaws a paused container.
func (c *Client) ResumeContainer(ctx context.Context, containerID string) error {
	ctx, cancel := c.call(ctx)
	defer cancel()
	_, err := c.api.ResumeContainer(ctx, &api.ResumeContainerRequest{ContainerId: containerID})
	return wrap("ResumeContainer", err)
}

// WriteStdin writes data to a process's stdin and returns how much was
// written. It waits for the process to read (a long poll: ctx must end
// when the caller stops caring). A reply claiming more than was sent is
// ErrBadReply.
func (c *Client) WriteStdin(ctx context.Context, containerID, execID string, data []byte) (int, error) {
	resp, err := c.api.WriteStdin(ctx, &api.WriteStdinRequest{ContainerId: containerID, ExecId: execID, Data: data})
	if err != nil {
		return 0, wrap("WriteStdin", err)
	}
	if n := resp.GetLen(); uint64(n) > uint64(len(data)) {
		return 0, fmt.Errorf("agent WriteStdin: reply says %d bytes written of %d sent: %w", n, len(data), ErrBadReply)
	}
	return int(resp.GetLen()), nil
}

// ReadStdout returns the next chunk (at most max bytes; 0: the agent's
// default) of a process's stdout, waiting for one; eof once the stream
// ended and was read to the end. It is a long poll (see WaitProcess). A
// reply longer than asked is ErrBadReply.
func (c *Client) ReadStdout(ctx context.Context, containerID, execID string, max uint32) (data []byte, eof bool, err error) {
	resp, err := c.api.ReadStdout(ctx, &api.ReadStreamRequest{ContainerId: containerID, ExecId: execID, MaxLen: max})
	if err != nil {
		return nil, false, wrap("ReadStdout", err)
	}
	return checkRead("ReadStdout", resp, max)
}

// ReadStderr is ReadStdout for stderr.
func (c *Client) ReadStderr(ctx context.Context, containerID, execID string, max uint32) (data []byte, eof bool, err error) {
	resp, err := c.api.ReadStderr(ctx, &api.ReadStreamRequest{ContainerId: containerID, ExecId: execID, MaxLen: max})
	if err != nil {
		return nil, false, wrap("ReadStderr", err)
	}
	return checkRead("ReadStderr", resp, max)
}

func checkRead(op string, resp *api.ReadStreamResponse, max uint32) ([]byte, bool, error) {
	limit := uint64(max)
	if max == 0 || max > MaxReadLen {
		limit = MaxReadLen
	}
	if n := uint64(len(resp.GetData())); n > limit {
		return nil, false, fmt.Errorf("agent %s: reply carries %d bytes, at most %d were asked: %w", op, n, limit, ErrBadReply)
	}
	return resp.GetData(), resp.GetEof(), nil
}

// CloseStdin closes a process's stdin (sends EOF to its terminal).
func (c *Client) CloseStdin(ctx context.Context, containerID, execID string) error {
	ctx, cancel := c.call(ctx)
	defer cancel()
	_, err := c.api.CloseStdin(ctx, &api.CloseStdinRequest{ContainerId: containerID, ExecId: execID})
	return wrap("CloseStdin", err)
}

// TtyWinResize sets the window size of a process's terminal.
func (c *Client) TtyWinResize(ctx context.Context, containerID, execID string, rows, cols uint32) error {
	ctx, cancel := c.call(ctx)
	defer cancel()
	_, err := c.api.TtyWinResize(ctx, &api.TtyWinResizeRequest{ContainerId: containerID, ExecId: execID, Rows: rows, Cols: cols})
	return wrap("TtyWinResize", err)
}

// GetOOMEvent blocks until a process of some container is OOM-killed and
// returns that container's id, as the guest names it: the caller checks it
// against its own containers. It is a long poll (see WaitProcess).
func (c *Client) GetOOMEvent(ctx context.Context) (string, error) {
	resp, err := c.api.GetOOMEvent(ctx, &api.GetOOMEventRequest{})
	if err != nil {
		return "", wrap("GetOOMEvent", err)
	}
	return resp.GetContainerId(), nil
}

// CopyFile sends one chunk of a file (or a directory or symbolic link) to
// the guest; see api.CopyFileRequest.
func (c *Client) CopyFile(ctx context.Context, req *api.CopyFileRequest) error {
	ctx, cancel := c.call(ctx)
	defer cancel()
	_, err := c.api.CopyFile(ctx, req)
	return wrap("CopyFile", err)
}

package virtcontainers

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"syscall"
	"time"

	"github.com/containerd/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/agent/client"
)

func (s *Sandbox) has(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.containers[id]; !ok {
		return fmt.Errorf("container %s: %w", id, errdefs.ErrNotFound)
	}
	return nil
}

// StartContainer starts a created container's init process.
func (s *Sandbox) StartContainer(ctx context.Context, id string) error {
	if err := s.has(id); err != nil {
		return err
	}
	return s.agent.StartContainer(ctx, id)
}

// Exec starts an additional process in a running container.
func (s *Sandbox) Exec(ctx context.Context, id, execID string, p *specs.Process, terminal, stdin bool) error {
	if err := s.has(id); err != nil {
		return err
	}
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	return s.agent.ExecProcess(ctx, &api.ExecProcessRequest{ContainerId: id, ExecId: execID, ProcessJson: b, Terminal: terminal, Stdin: stdin})
}

// Signal sends sig to a process, or to every process of the container with all.
func (s *Sandbox) Signal(ctx context.Context, id, execID string, sig syscall.Signal, all bool) error {
	return s.agent.SignalProcess(ctx, id, execID, uint32(sig), all)
}

// Wait blocks until a process exits and returns its status and time. It
// waits as long as the process runs: ctx must end when the caller stops
// caring. A time the guest got wrong (unset, invalid) is replaced by now.
func (s *Sandbox) Wait(ctx context.Context, id, execID string) (int, time.Time, error) {
	r, err := s.agent.WaitProcess(ctx, id, execID)
	if err != nil {
		return 0, time.Time{}, err
	}
	at := time.Now()
	if ts := r.GetExitedAt(); ts.IsValid() {
		at = ts.AsTime()
	}
	return int(r.GetExitStatus()), at, nil
}

// RemoveProcess makes the guest forget an exec'd process whose exit was
// collected, so that its records do not grow with every exec.
func (s *Sandbox) RemoveProcess(ctx context.Context, id, execID string) error {
	err := s.agent.RemoveProcess(ctx, id, execID)
	if err != nil && s.vmGone() {
		return nil // nothing left to forget
	}
	return err
}

// Pids lists a container's processes (guest pids) with their exec ids.
func (s *Sandbox) Pids(ctx context.Context, id string) ([]*api.ProcessInfo, error) {
	if err := s.has(id); err != nil {
		return nil, err
	}
	return s.agent.ListProcesses(ctx, id)
}

func (s *Sandbox) Pause(ctx context.Context, id string) error { return s.agent.PauseContainer(ctx, id) }
func (s *Sandbox) Resume(ctx context.Context, id string) error {
	return s.agent.ResumeContainer(ctx, id)
}

// Update applies new resource limits to a running container.
func (s *Sandbox) Update(ctx context.Context, id string, r *specs.LinuxResources) error {
	if err := s.has(id); err != nil {
		return err
	}
	return s.agent.UpdateContainer(ctx, id, guestResources(r))
}

// guestResources keeps the parts of the OCI resources the guest applies.
func guestResources(r *specs.LinuxResources) *api.LinuxResources {
	out := &api.LinuxResources{}
	if r == nil {
		return out
	}
	if m := r.Memory; m != nil {
		out.Memory = &api.LinuxMemory{Limit: m.Limit, Reservation: m.Reservation, Swap: m.Swap}
	}
	if c := r.CPU; c != nil {
		out.Cpu = &api.LinuxCPU{Shares: c.Shares, Quota: c.Quota, Period: c.Period, Cpus: c.Cpus, Mems: c.Mems}
	}
	if p := r.Pids; p != nil {
		out.Pids = &api.LinuxPids{Limit: p.Limit}
	}
	return out
}

// Stats returns the container's guest cgroup statistics.
func (s *Sandbox) Stats(ctx context.Context, id string) (*api.StatsContainerResponse, error) {
	if err := s.has(id); err != nil {
		return nil, err
	}
	return s.agent.StatsContainer(ctx, id)
}

// ResizePty sets a terminal's size.
func (s *Sandbox) ResizePty(ctx context.Context, id, execID string, width, height uint32) error {
	return s.agent.TtyWinResize(ctx, id, execID, height, width)
}

// CloseStdin closes a process's standard input in the guest.
func (s *Sandbox) CloseStdin(ctx context.Context, id, execID string) error {
	return s.agent.CloseStdin(ctx, id, execID)
}

// NextOOM blocks until the guest reports an OOM kill and names the container.
func (s *Sandbox) NextOOM(ctx context.Context) (string, error) { return s.agent.GetOOMEvent(ctx) }

const (
	// readChunk is the most a single stdout/stderr read asks the agent for.
	readChunk = 64 * 1024
	// stdinChunk is the most a single stdin write sends.
	stdinChunk = 64 * 1024
	// maxStdinStalls is how many writes in a row the agent may answer with
	// Len 0 (no progress) before the write fails: a guest that keeps doing
	// so must not spin the copy forever.
	maxStdinStalls = 3
	// maxEmptyReads is how many output reads in a row the agent may answer
	// with no data and no end-of-file before the read fails: the agent
	// waits for data, so such a reply is a guest spinning the copy.
	maxEmptyReads = 3
)

// Stdout returns a reader of a process's standard output (the terminal when
// it has one); it reads until the guest reports end-of-file.
func (s *Sandbox) Stdout(ctx context.Context, id, execID string) io.Reader {
	return &streamReader{ctx: ctx, read: func(ctx context.Context) ([]byte, bool, error) {
		return s.agent.ReadStdout(ctx, id, execID, readChunk)
	}}
}

// Stderr is Stdout for standard error.
func (s *Sandbox) Stderr(ctx context.Context, id, execID string) io.Reader {
	return &streamReader{ctx: ctx, read: func(ctx context.Context) ([]byte, bool, error) {
		return s.agent.ReadStderr(ctx, id, execID, readChunk)
	}}
}

// Stdin returns a writer to a process's standard input; Close sends EOF.
func (s *Sandbox) Stdin(ctx context.Context, id, execID string) io.WriteCloser {
	return &stdinWriter{ctx: ctx, s: s, id: id, execID: execID}
}

type streamReader struct {
	ctx  context.Context
	read func(context.Context) ([]byte, bool, error)
	buf  []byte
	eof  bool
}

func (r *streamReader) Read(p []byte) (int, error) {
	for empty := 0; len(r.buf) == 0; {
		if r.eof {
			return 0, io.EOF
		}
		data, eof, err := r.read(r.ctx)
		if err != nil {
			return 0, err
		}
		if len(data) > readChunk {
			return 0, fmt.Errorf("agent sent %d bytes of output, at most %d were asked: %w", len(data), readChunk, client.ErrBadReply)
		}
		if len(data) == 0 && !eof {
			if empty++; empty >= maxEmptyReads {
				return 0, fmt.Errorf("agent answered %d output reads in a row with nothing: %w", empty, io.ErrNoProgress)
			}
		}
		r.buf, r.eof = data, eof
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

type stdinWriter struct {
	ctx        context.Context
	s          *Sandbox
	id, execID string
}

// Write sends p in chunks. The agent answers how much each took: more than
// was sent is an error at once, and maxStdinStalls answers in a row of
// nothing written end the write with io.ErrNoProgress.
func (w *stdinWriter) Write(p []byte) (int, error) {
	written, stalls := 0, 0
	for written < len(p) {
		chunk := p[written:min(len(p), written+stdinChunk)]
		n, err := w.s.agent.WriteStdin(w.ctx, w.id, w.execID, chunk)
		if err != nil {
			return written, err
		}
		if n < 0 || n > len(chunk) {
			return written, fmt.Errorf("stdin of %s/%s: agent says %d bytes written of %d sent: %w", w.id, w.execID, n, len(chunk), client.ErrBadReply)
		}
		if n == 0 {
			if stalls++; stalls >= maxStdinStalls {
				return written, fmt.Errorf("stdin of %s/%s: agent wrote nothing %d times in a row: %w", w.id, w.execID, stalls, io.ErrNoProgress)
			}
			continue
		}
		stalls = 0
		written += n
	}
	return written, nil
}

func (w *stdinWriter) Close() error { return w.s.agent.CloseStdin(w.ctx, w.id, w.execID) }

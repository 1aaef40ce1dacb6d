package shimv2

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/fifo"
	"github.com/containerd/log"

	"github.com/kasa-runtime/kasa/virtcontainers"
)

// stdioPaths are where containerd wants a process's stdio: FIFO paths, or
// for output a file:// or binary:// (logging binary) URI.
type stdioPaths struct {
	stdin, stdout, stderr string
	terminal              bool
}

// processIO copies a process's stdio between containerd and the agent.
type processIO struct {
	// stdinHold is the shim's own write end of the stdin FIFO: it keeps the
	// FIFO from reading EOF when a client detaches; CloseIO closes it, so
	// whatever is still in the FIFO is forwarded before the process's EOF.
	stdinHold   io.Closer
	outputsDone chan struct{} // closed when stdout and stderr reached EOF
	closers     []io.Closer
	cmd         *exec.Cmd // logging binary, if any
	// loggerStderr is the logging binary's stderr pipe.
	loggerStderr io.WriteCloser
}

// startIO opens containerd's ends and starts the copies. Output copying runs
// until the guest reports EOF, which the agent does only after the process
// has exited and its output is drained; that is what Wait waits for before
// publishing the exit.
func startIO(ctx context.Context, sb *virtcontainers.Sandbox, cid, execID string, p stdioPaths) (_ *processIO, retErr error) {
	pio := &processIO{outputsDone: make(chan struct{})}
	defer func() {
		if retErr != nil {
			pio.close()
		}
	}()
	var outputs sync.WaitGroup
	copyOut := func(target string, src io.Reader, name string) error {
		if target == "" {
			return nil
		}
		w, err := pio.openOutput(ctx, cid, target)
		if err != nil {
			return fmt.Errorf("open %s %q: %w", name, target, err)
		}
		outputs.Add(1)
		go func() {
			defer outputs.Done()
			if _, err := io.Copy(w, src); err != nil {
				log.G(ctx).WithError(err).WithField("container", cid).WithField("exec", execID).Debugf("%s copy ended", name)
			}
			// The reader's EOF: CRI's ExecSync and attach wait for it
			// before they report the exit.
			w.Close()
		}()
		return nil
	}
	if err := copyOut(p.stdout, sb.Stdout(ctx, cid, execID), "stdout"); err != nil {
		return nil, err
	}
	if !p.terminal {
		if err := copyOut(p.stderr, sb.Stderr(ctx, cid, execID), "stderr"); err != nil {
			return nil, err
		}
	}
	go func() {
		outputs.Wait()
		close(pio.outputsDone)
	}()

	if p.stdin != "" {
		r, err := fifo.OpenFifo(ctx, p.stdin, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return nil, fmt.Errorf("open stdin %q: %w", p.stdin, err)
		}
		pio.closers = append(pio.closers, r)
		hold, err := fifo.OpenFifo(ctx, p.stdin, syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return nil, fmt.Errorf("open stdin %q for writing: %w", p.stdin, err)
		}
		pio.stdinHold = hold
		pio.closers = append(pio.closers, hold)
		go func() {
			w := sb.Stdin(ctx, cid, execID)
			if _, err := io.Copy(w, r); err != nil {
				log.G(ctx).WithError(err).WithField("container", cid).Debug("stdin copy ended")
			}
			w.Close() // EOF for the process
		}()
	}
	return pio, nil
}

// openOutput opens one output target: a FIFO (opened read-write so neither
// the open nor a write fails while containerd is not reading), a file:// URI,
// or a binary:// logging binary.
func (pio *processIO) openOutput(ctx context.Context, cid, target string) (io.WriteCloser, error) {
	u, err := url.Parse(target)
	if err != nil || u.Scheme == "" || u.Scheme == "fifo" {
		f, err := fifo.OpenFifo(ctx, target, syscall.O_RDWR, 0)
		if err != nil {
			return nil, err
		}
		pio.closers = append(pio.closers, f)
		return f, nil
	}
	switch u.Scheme {
	case "file":
		if err := os.MkdirAll(filepath.Dir(u.Path), 0o755); err != nil {
			return nil, err
		}
		f, err := os.OpenFile(u.Path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return nil, err
		}
		pio.closers = append(pio.closers, f)
		return f, nil
	case "binary":
		return pio.startLogger(ctx, cid, u)
	default:
		return nil, fmt.Errorf("unsupported stdio URI scheme %q (want a FIFO path, file:// or binary://)", u.Scheme)
	}
}

// startLogger runs containerd's logging-binary protocol: the binary gets the
// output on fd 3 (stdout) and 4 (stderr) and closes fd 5 once it is ready.
// Both outputs of the process go to its stdout pipe here; stderr, when
// asked for, opens the same binary's second pipe.
func (pio *processIO) startLogger(ctx context.Context, cid string, u *url.URL) (io.WriteCloser, error) {
	if pio.cmd != nil {
		return pio.loggerStderr, nil
	}
	ns, _ := namespaces.Namespace(ctx)
	args := []string{}
	for k, vs := range u.Query() {
		for _, v := range vs {
			args = append(args, k)
			if v != "" {
				args = append(args, v)
			}
		}
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(u.Path, args...)
	cmd.Env = append(os.Environ(), "CONTAINER_ID="+cid, "CONTAINER_NAMESPACE="+ns)
	cmd.ExtraFiles = []*os.File{outR, errR, readyW}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start logging binary %s: %w", u.Path, err)
	}
	outR.Close()
	errR.Close()
	readyW.Close()
	pio.cmd = cmd
	pio.closers = append(pio.closers, outW, errW)
	pio.loggerStderr = errW
	done := make(chan error, 1)
	go func() { _, err := readyR.Read(make([]byte, 1)); readyR.Close(); done <- err }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		return nil, fmt.Errorf("logging binary %s did not get ready", u.Path)
	}
	return outW, nil
}

// waitOutputs waits until all output is copied, or gives up after timeout
// (a process that left a child holding its pipes open).
func (pio *processIO) waitOutputs(timeout time.Duration) bool {
	if pio == nil {
		return true
	}
	select {
	case <-pio.outputsDone:
		return true
	case <-time.After(timeout):
		return false
	}
}

// closeStdin lets stdin end: once containerd's writers are gone too and the
// FIFO is drained, the process reads EOF.
func (pio *processIO) closeStdin() {
	if pio != nil && pio.stdinHold != nil {
		pio.stdinHold.Close()
	}
}

func (pio *processIO) close() {
	if pio == nil {
		return
	}
	for _, c := range pio.closers {
		c.Close()
	}
	if pio.cmd != nil {
		go pio.cmd.Wait()
	}
}

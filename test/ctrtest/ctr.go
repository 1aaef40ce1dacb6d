package ctrtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Result is what one ctr invocation produced.
type Result struct {
	Args     []string // ctr's arguments after the global flags
	Stdout   string
	Stderr   string
	ExitCode int
	Duration time.Duration // wall time of the ctr process
}

// String is a one-line summary for failure messages.
func (r Result) String() string {
	return fmt.Sprintf("ctr %s: exit %d, stdout %q, stderr %q", strings.Join(r.Args, " "), r.ExitCode, r.Stdout, r.Stderr)
}

// Run runs ctr against this containerd and namespace. A non-zero exit code
// is not an error: it is in the Result. The error is for a ctr that could
// not run or was cut off by ctx.
func (c *Containerd) Run(ctx context.Context, args ...string) (Result, error) {
	return c.RunStdin(ctx, nil, args...)
}

// RunStdin is Run with stdin fed from r (nil: no stdin). For `ctr run` and
// `ctr tasks exec` prefer RunContainer: ctr closes the process' stdin only
// if it reads EOF after the task exists, so a short r races and the process
// may never see EOF.
func (c *Containerd) RunStdin(ctx context.Context, r io.Reader, args ...string) (Result, error) {
	// Without a connect timeout ctr waits forever for a dead socket.
	full := append([]string{"--address", c.Address, "--namespace", c.Namespace, "--connect-timeout", "10s"}, args...)
	cmd := exec.CommandContext(ctx, c.ctr, full...)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = r, &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	res := Result{Args: args, Stdout: stdout.String(), Stderr: stderr.String(), Duration: time.Since(start)}
	var exit *exec.ExitError
	switch {
	case err == nil:
	case ctx.Err() != nil:
		res.ExitCode = -1
		return res, fmt.Errorf("ctr %s: %w (stderr %q)", strings.Join(args, " "), ctx.Err(), res.Stderr)
	case errors.As(err, &exit) && exit.ExitCode() >= 0:
		res.ExitCode = exit.ExitCode()
	default:
		res.ExitCode = -1
		return res, fmt.Errorf("ctr %s: %w", strings.Join(args, " "), err)
	}
	return res, nil
}

// Container describes one `ctr run`.
type Container struct {
	ID      string
	Runtime string    // default RuntimeRunc
	Image   string    // default the imported busybox image
	Args    []string  // the command; empty: the image's
	Stdin   io.Reader // piped in (ctr 1.6 always forwards its stdin); nil: empty
	Flags   []string  // more ctr run flags, e.g. --env, --mount
	// Detach starts the task and returns (ctr run --detach) instead of
	// running it to completion and removing it; Stop cleans up what the
	// test does not.
	Detach bool
	// RuntimeConfigPath is passed with --runtime-config-path (a non-runc
	// runtime's ConfigPath option); for Kasa it defaults to
	// Options.KasaConfigPath.
	RuntimeConfigPath string
}

// RunContainer runs a container to completion with `ctr run --rm` and
// returns its output and exit code. Its stdio FIFOs are under Dir; runc
// containers get this instance's runc root.
func (c *Containerd) RunContainer(ctx context.Context, ct Container) (Result, error) {
	args := c.RunArgs(ct)
	if ct.Stdin == nil || ct.Detach {
		return c.RunStdin(ctx, ct.Stdin, args...)
	}
	// ctr forwards the EOF of its stdin as CloseIO only once it holds the
	// task (containerd 1.6 and 1.7 alike), so EOF is held back until the
	// task runs.
	pr, pw, err := os.Pipe()
	if err != nil {
		return Result{Args: args, ExitCode: -1}, err
	}
	done, fed := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(fed)
		defer pw.Close()
		if _, err := io.Copy(pw, ct.Stdin); err != nil {
			return // ctr is gone
		}
		c.waitTaskStarted(ctx, ct.ID, done)
	}()
	res, err := c.RunStdin(ctx, pr, args...)
	close(done)
	pr.Close()
	<-fed
	return res, err
}

// waitTaskStarted returns once task id is running or has run, or done is
// closed.
func (c *Containerd) waitTaskStarted(ctx context.Context, id string, done <-chan struct{}) {
	for {
		if status, _ := c.TaskStatus(ctx, id); status == "RUNNING" || status == "STOPPED" || status == "PAUSED" {
			return
		}
		select {
		case <-done:
			return
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TaskStatus is the status `ctr tasks ls` shows for task id (CREATED,
// RUNNING, STOPPED, PAUSED...), or "" if there is no such task.
func (c *Containerd) TaskStatus(ctx context.Context, id string) (string, error) {
	res, err := c.Run(ctx, "tasks", "ls")
	if err != nil {
		return "", err
	}
	if res.ExitCode != 0 {
		return "", fmt.Errorf("%s", res)
	}
	for _, line := range strings.Split(res.Stdout, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == id {
			return f[2], nil
		}
	}
	return "", nil
}

// RunArgs are the ctr arguments RunContainer uses.
func (c *Containerd) RunArgs(ct Container) []string {
	runtime := ct.Runtime
	if runtime == "" {
		runtime = RuntimeRunc
	}
	image := ct.Image
	if image == "" {
		image = c.Image
	}
	mode := "--rm"
	if ct.Detach {
		mode = "--detach"
	}
	args := []string{"run", mode, "--runtime", runtime, "--fifo-dir", filepath.Join(c.Dir, "fifo")}
	switch {
	case runtime == RuntimeRunc:
		args = append(args, "--runc-root", c.RuncRoot)
	case ct.RuntimeConfigPath != "":
		args = append(args, "--runtime-config-path", ct.RuntimeConfigPath)
	case runtime == RuntimeKasa && c.kasaConfig != "":
		args = append(args, "--runtime-config-path", c.kasaConfig)
	}
	args = append(args, ct.Flags...)
	args = append(args, image, ct.ID)
	return append(args, ct.Args...)
}

// Version is the server version containerd reports.
func (c *Containerd) Version(ctx context.Context) (string, error) {
	res, err := c.Run(ctx, "version")
	if err != nil {
		return "", err
	}
	server := false
	for _, line := range strings.Split(res.Stdout, "\n") {
		line = strings.TrimSpace(line)
		if line == "Server:" {
			server = true
		}
		if v, ok := strings.CutPrefix(line, "Version:"); ok && server {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("no server version in %s", res)
}

// KasaConfig is the Kasa configuration file passed to the Kasa runtime
// (Options.KasaConfigPath).
func (c *Containerd) KasaConfig() string { return c.kasaConfig }

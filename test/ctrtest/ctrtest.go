// Package ctrtest starts a private containerd for tests and benchmarks and
// drives it with the ctr CLI: its own config, root, state, socket and
// namespace, a locally built busybox image, and checks that a run left
// nothing behind.
package ctrtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Runtime types and the binary containerd looks up for Kasa's.
const (
	RuntimeRunc = "io.containerd.runc.v2"
	RuntimeKasa = "io.containerd.kasa.v2"
	ShimKasa    = "containerd-shim-kasa-v2"
)

// DefaultBaseDir holds one directory per harness instance. It is short on
// purpose: a unix socket path may not exceed 107 bytes.
const DefaultBaseDir = "/run/kasa-test"

// Options configure a private containerd. The zero value is usable.
type Options struct {
	// BinDirs are put first on containerd's PATH, so the shims it starts
	// (containerd-shim-<name>-v2) are looked up there first.
	BinDirs []string
	// Env is added to containerd's environment, which its shims inherit
	// (e.g. KASA_CONF_FILE).
	Env []string
	// Namespace defaults to "kasatest-<random>".
	Namespace string
	// BaseDir defaults to DefaultBaseDir; the instance lives in
	// BaseDir/<random>.
	BaseDir string
	// Containerd and Ctr default to the binaries found on PATH.
	Containerd, Ctr string
	// Debug sets containerd's log level to debug.
	Debug bool
	// CRI enables containerd's CRI plugin with a runc runtime (its own
	// runc root) and the Kasa runtime under the handler "kata". Without it
	// the plugin is disabled and only ctr drives containerd.
	CRI bool
	// SandboxImage is CRI's pause image (CRI only).
	SandboxImage string
	// CNIConfDir is CRI's CNI configuration directory; CNI binaries come
	// from /usr/lib/cni (CRI only). Defaults to a directory of the instance
	// with a bridge + host-local + portmap network of its own (a bridge
	// and a /24 per instance, removed by Stop).
	CNIConfDir string
	// RegistryMirror is the endpoint (http://host:port) CRI pulls images of
	// MirroredRegistries from: Registry.Endpoint (CRI only).
	RegistryMirror string
	// Crictl is crictl's path (CRI only); default: crictl on PATH, if any.
	Crictl string
	// KasaConfigPath is Kasa's configuration file, passed as the shim's
	// ConfigPath option: by RunContainer for the Kasa runtime and in the
	// CRI runtime options.
	KasaConfigPath string
	// ExtraConfig is TOML appended to the generated config.toml.
	ExtraConfig string
	// StartTimeout bounds the wait for containerd to answer; default 30s.
	StartTimeout time.Duration
}

// Containerd is a running private containerd.
type Containerd struct {
	Dir       string // everything of this instance is under Dir
	Address   string // gRPC socket
	Namespace string
	Root      string
	State     string
	RuncRoot  string // runc's --root for containers started by RunContainer
	LogPath   string
	Config    string // path of the generated config.toml
	PID       int
	// Release is the containerd binary's version (`containerd --version`):
	// it picks the config.toml format.
	Release Release
	// StartupTime is from spawning containerd to its first answer to
	// `ctr version`.
	StartupTime time.Duration
	// Image is the busybox image reference once ImportBusybox ran.
	Image string

	ctr, kasaConfig string
	crictl          string
	net             podNetwork
	cmd             *exec.Cmd
	exited          chan struct{}
	waitErr         error
	stopOnce        sync.Once
	stopErr         error
}

// CIMode reports whether a missing prerequisite must fail (CI=true).
func CIMode() bool { return os.Getenv("CI") == "true" }

// Missing stops the test because a prerequisite is missing: a failure under
// CI=true, a skip otherwise.
func Missing(tb testing.TB, format string, args ...any) {
	tb.Helper()
	what := fmt.Sprintf(format, args...)
	if CIMode() {
		tb.Fatalf("prerequisite missing under CI: %s", what)
	}
	tb.Skipf("needs %s", what)
}

// Require stops the test (see Missing) unless it runs as root and every
// named binary is on PATH.
func Require(tb testing.TB, binaries ...string) {
	tb.Helper()
	if os.Geteuid() != 0 {
		Missing(tb, "root")
	}
	for _, b := range binaries {
		if _, err := exec.LookPath(b); err != nil {
			Missing(tb, "%s on PATH (hack/install-deps.sh installs containerd, runc and busybox-static)", b)
		}
	}
}

// Start launches a private containerd for the test and stops it, removing
// its directories, when the test ends; if the test failed, the tail of
// containerd's log is printed first. A missing prerequisite (root,
// containerd, ctr) skips the test, or fails it under CI=true.
func Start(tb testing.TB, opts Options) *Containerd {
	tb.Helper()
	bins := []string{"containerd", "ctr"}
	if opts.Containerd != "" || opts.Ctr != "" {
		bins = nil
	}
	Require(tb, bins...)
	started := time.Now()
	c, err := Launch(context.Background(), opts)
	if err != nil {
		tb.Fatalf("start containerd: %v", err)
	}
	tb.Logf("containerd %s pid %d answering on %s after %v (namespace %s)", c.Release.Text, c.PID, c.Address, time.Since(started).Round(time.Millisecond), c.Namespace)
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("tail of containerd's log %s:\n%s", c.LogPath, c.LogTail(60))
		}
		// KASA_TEST_KEEP_LOGS=DIR keeps containerd's whole log (shims log
		// into it) as DIR/<test>.log.
		if dir := os.Getenv("KASA_TEST_KEEP_LOGS"); dir != "" {
			if b, err := os.ReadFile(c.LogPath); err == nil && os.MkdirAll(dir, 0o755) == nil {
				os.WriteFile(filepath.Join(dir, strings.ReplaceAll(tb.Name(), "/", "_")+".log"), b, 0o644)
			}
		}
		if err := c.Stop(); err != nil {
			tb.Errorf("stop containerd: %v", err)
		}
	})
	return c
}

// Launch starts a private containerd and waits until it answers. The caller
// must call Stop. On error nothing is left behind and the error carries the
// tail of containerd's log.
func Launch(ctx context.Context, opts Options) (*Containerd, error) {
	var err error
	containerd, ctr := opts.Containerd, opts.Ctr
	if containerd == "" {
		if containerd, err = exec.LookPath("containerd"); err != nil {
			return nil, fmt.Errorf("containerd not found on PATH: %w", err)
		}
	}
	if ctr == "" {
		if ctr, err = exec.LookPath("ctr"); err != nil {
			return nil, fmt.Errorf("ctr not found on PATH: %w", err)
		}
	}
	base := opts.BaseDir
	if base == "" {
		base = DefaultBaseDir
	}
	if err := os.MkdirAll(base, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", base, err)
	}
	dir, err := os.MkdirTemp(base, "")
	if err != nil {
		return nil, fmt.Errorf("create instance directory under %s: %w", base, err)
	}
	c := &Containerd{
		Dir:        dir,
		Address:    filepath.Join(dir, "containerd.sock"),
		Namespace:  opts.Namespace,
		Root:       filepath.Join(dir, "root"),
		State:      filepath.Join(dir, "state"),
		RuncRoot:   filepath.Join(dir, "runc"),
		LogPath:    filepath.Join(dir, "containerd.log"),
		Config:     filepath.Join(dir, "config.toml"),
		ctr:        ctr,
		kasaConfig: opts.KasaConfigPath,
		exited:     make(chan struct{}),
	}
	if c.Namespace == "" {
		c.Namespace = "kasatest-" + randomHex(4)
	}
	if n := len(c.Address + ".ttrpc"); n > 107 {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("socket path %s.ttrpc is %d bytes, unix sockets allow 107: use a shorter BaseDir", c.Address, n)
	}
	if err := c.launch(ctx, containerd, opts); err != nil {
		if stopErr := c.Stop(); stopErr != nil {
			err = fmt.Errorf("%w (and stopping it: %v)", err, stopErr)
		}
		return nil, err
	}
	return c, nil
}

func (c *Containerd) launch(ctx context.Context, containerd string, opts Options) error {
	for _, d := range []string{c.Root, c.State, c.RuncRoot, filepath.Join(c.Dir, "opt")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	if opts.CRI {
		c.crictl = opts.Crictl
		if c.crictl == "" {
			c.crictl, _ = exec.LookPath("crictl")
		}
	}
	var err error
	if c.Release, err = BinaryRelease(containerd); err != nil {
		return err
	}
	if opts.CRI && opts.CNIConfDir == "" {
		opts.CNIConfDir = filepath.Join(c.Dir, "cni")
		if err := os.MkdirAll(opts.CNIConfDir, 0o755); err != nil {
			return err
		}
		c.net = newPodNetwork()
		if err := os.WriteFile(filepath.Join(opts.CNIConfDir, "10-kasa-test.conflist"), c.net.conflist(), 0o644); err != nil {
			return err
		}
	}
	if err := os.WriteFile(c.Config, []byte(renderConfig(c, opts)), 0o600); err != nil {
		return err
	}
	logFile, err := os.OpenFile(c.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	c.cmd = exec.Command(containerd, "--config", c.Config)
	c.cmd.Env = containerdEnv(opts)
	c.cmd.Stdout, c.cmd.Stderr = logFile, logFile
	// Its own process group keeps a terminal's ^C for the test; the death
	// signal keeps containerd from outliving a killed test binary.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	started := time.Now()
	if err := c.cmd.Start(); err != nil {
		logFile.Close()
		close(c.exited)
		return fmt.Errorf("start %s: %w", containerd, err)
	}
	c.PID = c.cmd.Process.Pid
	go func() {
		c.waitErr = c.cmd.Wait()
		logFile.Close()
		close(c.exited)
	}()
	if err := c.waitReady(ctx, opts.StartTimeout); err != nil {
		return fmt.Errorf("%w\ntail of %s:\n%s", err, c.LogPath, c.LogTail(40))
	}
	c.StartupTime = time.Since(started)
	return nil
}

// waitReady polls the socket until `ctr version` answers.
func (c *Containerd) waitReady(ctx context.Context, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last string
	for {
		if conn, err := net.Dial("unix", c.Address); err == nil {
			conn.Close()
			res, err := c.Run(ctx, "version")
			if err == nil && res.ExitCode == 0 {
				return nil
			}
			last = fmt.Sprintf("ctr version: %v %s", err, strings.TrimSpace(res.Stderr))
		} else {
			last = err.Error()
		}
		select {
		case <-c.exited:
			return fmt.Errorf("containerd exited before answering: %v", c.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("containerd did not answer on %s within %v: %s", c.Address, timeout, last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Stop removes what is left in the namespace (tasks killed, containers
// deleted), stops containerd (SIGTERM, then SIGKILL after 10s), kills shims
// still serving it, unmounts what remains under Dir and removes Dir. It is
// safe to call more than once.
func (c *Containerd) Stop() error {
	c.stopOnce.Do(func() { c.stopErr = c.stop() })
	return c.stopErr
}

func (c *Containerd) stop() error {
	var errs []error
	if c.cmd != nil && c.cmd.Process != nil && !c.hasExited() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		if err := c.removePods(ctx); err != nil {
			errs = append(errs, err)
		}
		if err := c.removeAll(ctx); err != nil {
			errs = append(errs, err)
		}
		cancel()
		c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.exited:
		case <-time.After(10 * time.Second):
			c.cmd.Process.Kill()
			<-c.exited
			errs = append(errs, fmt.Errorf("containerd pid %d ignored SIGTERM for 10s, killed", c.PID))
		}
	}
	for _, p := range processes() {
		if isShim(p.argv) && argValue(p.argv, "-address") == c.Address {
			syscall.Kill(p.pid, syscall.SIGKILL)
			errs = append(errs, fmt.Errorf("shim %d %v outlived containerd, killed", p.pid, p.argv))
		}
	}
	if err := unmountUnder(c.Dir); err != nil {
		// Never RemoveAll through a mount: it could reach host files.
		return errors.Join(append(errs, err)...)
	}
	removeCgroups(c.Namespace)
	if err := c.removeBridge(); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(c.Dir); err != nil {
		errs = append(errs, err)
	}
	os.Remove(filepath.Dir(c.Dir)) // the shared base, if now empty
	return errors.Join(errs...)
}

func (c *Containerd) hasExited() bool {
	select {
	case <-c.exited:
		return true
	default:
		return false
	}
}

// removeAll kills and deletes every task and container of the namespace, so
// a test that failed half-way leaves no shim running. A ctr run --rm still
// alive may remove some of them first; only what is still listed afterwards
// is an error.
func (c *Containerd) removeAll(ctx context.Context) error {
	for _, id := range c.list(ctx, "tasks") {
		c.Run(ctx, "tasks", "kill", "-a", "-s", "SIGKILL", id)
		c.Run(ctx, "tasks", "delete", "-f", id)
	}
	for _, id := range c.list(ctx, "containers") {
		c.Run(ctx, "containers", "delete", id)
	}
	var errs []error
	for _, kind := range []string{"tasks", "containers"} {
		if left := c.list(ctx, kind); len(left) > 0 {
			errs = append(errs, fmt.Errorf("%s %v survive deletion", kind, left))
		}
	}
	return errors.Join(errs...)
}

// list returns the ids of the namespace's tasks or containers.
func (c *Containerd) list(ctx context.Context, kind string) []string {
	res, err := c.Run(ctx, kind, "ls", "-q")
	if err != nil || res.ExitCode != 0 {
		return nil
	}
	return strings.Fields(res.Stdout)
}

// unmountUnder detaches every mount at or below dir, deepest first.
func unmountUnder(dir string) error {
	mounts, err := mountPoints()
	if err != nil {
		return err
	}
	var under []string
	for _, m := range mounts {
		if within(m, dir) {
			under = append(under, m)
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(under)))
	var errs []error
	for _, m := range under {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
		}
	}
	return errors.Join(errs...)
}

// removeCgroups removes the namespace's (now empty) cgroup directories that
// ctr's default cgroup path /<namespace>/<id> created.
func removeCgroups(namespace string) {
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*/" + namespace)
	if d := "/sys/fs/cgroup/" + namespace; isDir(d) {
		dirs = append(dirs, d)
	}
	for _, d := range dirs {
		kids, _ := filepath.Glob(d + "/*")
		for _, k := range kids {
			if isDir(k) {
				syscall.Rmdir(k)
			}
		}
		syscall.Rmdir(d)
	}
}

// LogTail returns the last n lines of containerd's log.
func (c *Containerd) LogTail(n int) string {
	b, err := os.ReadFile(c.LogPath)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", c.LogPath, err)
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// within reports whether p is dir or below it.
func within(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}

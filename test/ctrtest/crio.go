package ctrtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

// CRIOOptions configure a private CRI-O.
type CRIOOptions struct {
	// CRIODir holds crio and pinns (../shared/cri-o beside the clone).
	CRIODir string
	// DropIn is the registration file Kasa ships
	// (configuration/runtime/crio-kata.conf): it goes into CRI-O's
	// drop-in directory byte for byte.
	DropIn string
	// Shim is the shim under test and KasaConfig the Kasa configuration the
	// test wants. CRI-O runs in a mount namespace of its own where they are
	// bind-mounted on the drop-in's runtime_path and runtime_config_path, so
	// that the drop-in needs no change (the paths get an empty placeholder
	// file on the host, removed by Stop, when nothing is there).
	Shim, KasaConfig string
	// RegistryMirror is host:port of a plain-HTTP registry that mirrors
	// MirroredRegistries (Registry.Addr).
	RegistryMirror string
	// PauseImage is CRI-O's pause_image, pulled from the mirror.
	PauseImage string
	// Crictl is crictl's path.
	Crictl string
	// Debug sets CRI-O's log level to debug.
	Debug bool
}

// CRIO is a running private CRI-O: its own root (a tmpfs in its mount
// namespace), runroot, socket, CNI bridge, registries and signature policy,
// cgroupfs, and Kasa's drop-in as the only runtime handler ("kata", also the
// default).
type CRIO struct {
	Dir     string
	Address string // CRI socket
	LogPath string
	PID     int
	// Handler is the drop-in's runtime handler as CRI-O read it.
	RuntimePath, RuntimeConfigPath string

	crictl string
	net    podNetwork
	// baseMounts are the mount ids CRI-O's namespace was born with (copies
	// of the host's): not CRI-O's doing.
	baseMounts   map[string]bool
	placeholders []string
	argv         []string
	rootMounted  bool
	cmd          *exec.Cmd
	exited       chan struct{}
	stopOnce     sync.Once
	stopErr      error
}

// crioDropIn is what the harness reads of Kasa's drop-in.
type crioDropIn struct {
	Crio struct {
		Runtime struct {
			Runtimes map[string]struct {
				RuntimePath       string `toml:"runtime_path"`
				RuntimeConfigPath string `toml:"runtime_config_path"`
			}
		}
	}
}

// StartCRIO launches a private CRI-O for the test and stops it when the test
// ends (the tail of its log first if the test failed).
func StartCRIO(tb testing.TB, opts CRIOOptions) *CRIO {
	tb.Helper()
	Require(tb, "unshare", "mount")
	c, err := LaunchCRIO(context.Background(), opts)
	if err != nil {
		tb.Fatalf("start CRI-O: %v", err)
	}
	tb.Logf("CRI-O pid %d answering on %s", c.PID, c.Address)
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("tail of CRI-O's log %s:\n%s", c.LogPath, c.LogTail(80))
		}
		if dir := os.Getenv("KASA_TEST_KEEP_LOGS"); dir != "" {
			if b, err := os.ReadFile(c.LogPath); err == nil && os.MkdirAll(dir, 0o755) == nil {
				os.WriteFile(filepath.Join(dir, strings.ReplaceAll(tb.Name(), "/", "_")+".crio.log"), b, 0o644)
			}
		}
		if err := c.Stop(); err != nil {
			tb.Errorf("stop CRI-O: %v", err)
		}
	})
	return c
}

// LaunchCRIO starts a private CRI-O and waits until it answers; the caller
// must call Stop.
func LaunchCRIO(ctx context.Context, opts CRIOOptions) (_ *CRIO, retErr error) {
	crio := filepath.Join(opts.CRIODir, "crio")
	pinns := filepath.Join(opts.CRIODir, "pinns")
	for _, p := range []string{crio, pinns, opts.DropIn, opts.Shim, opts.KasaConfig} {
		if _, err := os.Stat(p); err != nil {
			return nil, err
		}
	}
	dropIn, err := os.ReadFile(opts.DropIn)
	if err != nil {
		return nil, err
	}
	var reg crioDropIn
	if _, err := toml.Decode(string(dropIn), &reg); err != nil {
		return nil, fmt.Errorf("%s: %w", opts.DropIn, err)
	}
	kata, ok := reg.Crio.Runtime.Runtimes["kata"]
	if !ok || !filepath.IsAbs(kata.RuntimePath) || !filepath.IsAbs(kata.RuntimeConfigPath) {
		return nil, fmt.Errorf("%s: no [crio.runtime.runtimes.kata] with absolute runtime_path and runtime_config_path", opts.DropIn)
	}
	if err := os.MkdirAll(DefaultBaseDir, 0o700); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(DefaultBaseDir, "crio")
	if err != nil {
		return nil, err
	}
	c := &CRIO{
		Dir: dir, Address: filepath.Join(dir, "crio.sock"), LogPath: filepath.Join(dir, "crio.log"),
		RuntimePath: kata.RuntimePath, RuntimeConfigPath: kata.RuntimeConfigPath,
		crictl: opts.Crictl, net: newPodNetwork(),
	}
	defer func() {
		if retErr != nil {
			if err := c.Stop(); err != nil {
				retErr = fmt.Errorf("%w (and stopping it: %v)", retErr, err)
			}
		}
	}()
	for _, d := range []string{"root", "runroot", "logs", "ns", "exits", "attach", "cni", "crio.conf.d", "registries.conf.d"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	level := "info"
	if opts.Debug {
		level = "debug"
	}
	files := map[string]string{
		"crio.conf": renderCRIOConfig(dir, pinns, level, opts.PauseImage),
		// The drop-in as shipped, under the name the README installs it as.
		filepath.Join("crio.conf.d", "50-kasa.conf"): string(dropIn),
		"policy.json": `{"default": [{"type": "insecureAcceptAnything"}]}` + "\n",
		// CRI-O's hidden --registries-conf(-dir) keep the host's out.
		"registries.conf": "unqualified-search-registries = [\"docker.io\"]\n",
		filepath.Join("registries.conf.d", "50-kasa-test-mirror.conf"): renderRegistries(opts.RegistryMirror),
		"storage.conf": "[storage]\ndriver = \"overlay\"\n",
		filepath.Join("cni", "10-kasa-test.conflist"): string(c.net.conflist()),
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			return nil, err
		}
	}
	for _, p := range []string{kata.RuntimePath, kata.RuntimeConfigPath} {
		if err := c.placeholder(p); err != nil {
			return nil, err
		}
	}
	// Container storage on a tmpfs of the instance, where overlay works
	// whatever the host's root file system is; mounted here, not in
	// CRI-O's namespace, so that it outlives a restart of CRI-O.
	if err := syscall.Mount("kasa-crio", filepath.Join(dir, "root"), "tmpfs", 0, "mode=0700"); err != nil {
		return nil, fmt.Errorf("tmpfs for CRI-O's storage: %w", err)
	}
	c.rootMounted = true
	c.argv = []string{"unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
		`mount --bind "$1" "$2" && mount --bind "$3" "$4" && shift 4 && exec "$@"`, "sh",
		opts.Shim, kata.RuntimePath, opts.KasaConfig, kata.RuntimeConfigPath,
		crio, "--config", filepath.Join(dir, "crio.conf"), "--config-dir", filepath.Join(dir, "crio.conf.d"),
		"--registries-conf", filepath.Join(dir, "registries.conf"), "--registries-conf-dir", filepath.Join(dir, "registries.conf.d")}
	if err := c.start(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// start runs CRI-O in a mount namespace of its own (and so of its shims,
// pinns and VMs) where the shim and configuration under test are at the
// drop-in's paths, and waits until it answers.
func (c *CRIO) start(ctx context.Context) error {
	logFile, err := os.OpenFile(c.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	c.exited = make(chan struct{})
	c.cmd = exec.Command(c.argv[0], c.argv[1:]...)
	c.cmd.Dir = c.Dir
	c.cmd.Env = append(os.Environ(), "CONTAINERS_STORAGE_CONF="+filepath.Join(c.Dir, "storage.conf"))
	c.cmd.Stdout, c.cmd.Stderr = logFile, logFile
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		logFile.Close()
		close(c.exited)
		return err
	}
	c.PID = c.cmd.Process.Pid // unshare, then sh, then crio itself (exec)
	cmd, exited := c.cmd, c.exited
	go func() {
		cmd.Wait()
		logFile.Close()
		close(exited)
	}()
	if err := c.waitReady(ctx, time.Minute); err != nil {
		return fmt.Errorf("%w\ntail of %s:\n%s", err, c.LogPath, c.LogTail(40))
	}
	c.baseMounts = map[string]bool{}
	for id := range c.mounts() {
		c.baseMounts[id] = true
	}
	return nil
}

// Restart stops CRI-O (SIGTERM, as systemd does; pods keep running) and
// starts it again on the same storage and state.
func (c *CRIO) Restart(ctx context.Context) error {
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(30 * time.Second):
		return fmt.Errorf("CRI-O did not exit within 30s of SIGTERM")
	}
	return c.start(ctx)
}

// placeholder makes p exist as an empty file, for a bind mount on it, if
// nothing is there; Stop removes what it made.
func (c *CRIO) placeholder(p string) error {
	if _, err := os.Lstat(p); err == nil {
		return nil
	}
	for d := filepath.Dir(p); ; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); err == nil {
			break
		}
		c.placeholders = append([]string{d}, c.placeholders...)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	f.Close()
	c.placeholders = append(c.placeholders, p)
	return nil
}

func renderCRIOConfig(dir, pinns, level, pauseImage string) string {
	p := func(name string) string { return strconv.Quote(filepath.Join(dir, name)) }
	return fmt.Sprintf(`# generated by ctrtest
[crio]
root = %s
runroot = %s
storage_driver = "overlay"
log_dir = %s
version_file = %s
version_file_persist = %s
clean_shutdown_file = %s

[crio.api]
listen = %s
stream_address = "127.0.0.1"
stream_port = "0"

[crio.runtime]
cgroup_manager = "cgroupfs"
conmon_cgroup = "pod"
namespaces_dir = %s
pinns_path = %q
container_exits_dir = %s
container_attach_socket_dir = %s
# Kasa's handler from the drop-in; no runc handler (it would need conmon).
default_runtime = "kata"
log_level = %q

[crio.image]
pause_image = %q
# The test pause image has /pause as its entrypoint; Kasa's agent runs its
# own pause in the VM anyway.
pause_command = ""
signature_policy = %s

[crio.network]
network_dir = %s
plugin_dirs = ["/usr/lib/cni"]

[crio.metrics]
enable_metrics = false

[crio.nri]
enable_nri = false
`, p("root"), p("runroot"), p("logs"), p("version"), p("version-persist"), p("clean.shutdown"),
		p("crio.sock"), p("ns"), pinns, p("exits"), p("attach"), level, pauseImage, p("policy.json"), p("cni"))
}

// renderRegistries sends every MirroredRegistries pull to mirror, over
// plain HTTP.
func renderRegistries(mirror string) string {
	var b strings.Builder
	b.WriteString("# generated by ctrtest\n")
	for _, host := range MirroredRegistries {
		fmt.Fprintf(&b, "\n[[registry]]\nprefix = %q\nlocation = %q\n[[registry.mirror]]\nlocation = %q\ninsecure = true\n", host, host, mirror)
	}
	return b.String()
}

func (c *CRIO) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last string
	for {
		if conn, err := net.Dial("unix", c.Address); err == nil {
			conn.Close()
			res, err := c.Crictl(ctx, "version")
			if err == nil && res.ExitCode == 0 {
				return nil
			}
			last = fmt.Sprintf("crictl version: %v %s", err, strings.TrimSpace(res.Stderr))
		} else {
			last = err.Error()
		}
		select {
		case <-c.exited:
			return fmt.Errorf("CRI-O exited before answering")
		case <-ctx.Done():
			return fmt.Errorf("CRI-O did not answer on %s: %s", c.Address, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Stop removes every pod, stops CRI-O, removes its bridge, the
// placeholders and its directory. Idempotent.
func (c *CRIO) Stop() error {
	c.stopOnce.Do(func() {
		var errs []error
		if c.cmd != nil && c.cmd.Process != nil && c.exited != nil {
			select {
			case <-c.exited:
			default:
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
				if res, err := c.Crictl(ctx, "rmp", "--all", "--force"); err != nil || res.ExitCode != 0 {
					errs = append(errs, fmt.Errorf("removing pods: %v %s", err, res))
				}
				cancel()
				c.cmd.Process.Signal(syscall.SIGTERM)
				select {
				case <-c.exited:
				case <-time.After(20 * time.Second):
					c.cmd.Process.Kill()
					<-c.exited
				}
			}
		}
		if err := (&Containerd{net: c.net}).removeBridge(); err != nil {
			errs = append(errs, err)
		}
		// Its mount namespace lives as long as a process in it: the shims
		// of pods removed a moment ago may still be exiting.
		for i := len(c.placeholders) - 1; i >= 0; i-- {
			var err error
			if fi, err := os.Lstat(c.placeholders[i]); err == nil && fi.Mode().IsRegular() && fi.Size() > 0 {
				continue // someone installed a real one meanwhile
			}
			for try := 0; try < 50; try++ {
				if err = os.Remove(c.placeholders[i]); err == nil || errors.Is(err, os.ErrNotExist) {
					err = nil
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				errs = append(errs, err)
			}
		}
		if c.rootMounted {
			if err := unmountUnder(filepath.Join(c.Dir, "root")); err != nil {
				errs = append(errs, err)
			}
		}
		if err := os.RemoveAll(c.Dir); err != nil {
			errs = append(errs, err)
		}
		c.stopErr = errors.Join(errs...)
	})
	return c.stopErr
}

// LogTail returns the last n lines of CRI-O's log (its shims log into it).
func (c *CRIO) LogTail(n int) string {
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

// Log returns CRI-O's whole log.
func (c *CRIO) Log() string {
	b, _ := os.ReadFile(c.LogPath)
	return string(b)
}

// Crictl runs crictl against this CRI-O; a non-zero exit is in the Result.
func (c *CRIO) Crictl(ctx context.Context, args ...string) (Result, error) {
	return c.CrictlStdin(ctx, nil, args...)
}

// CrictlStdin is Crictl with stdin from r (nil: none).
func (c *CRIO) CrictlStdin(ctx context.Context, r io.Reader, args ...string) (Result, error) {
	cmd := c.CrictlCommand(ctx, args...)
	cmd.Stdin = r
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	res := Result{Args: append([]string{"crictl"}, args...), Stdout: stdout.String(), Stderr: stderr.String(), Duration: time.Since(start)}
	if ee, ok := err.(*exec.ExitError); ok && ctx.Err() == nil {
		res.ExitCode = ee.ExitCode()
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("crictl %s: %w", strings.Join(args, " "), err)
	}
	return res, nil
}

// CrictlCommand is crictl with args against this CRI-O, not started.
func (c *CRIO) CrictlCommand(ctx context.Context, args ...string) *exec.Cmd {
	full := append([]string{"--runtime-endpoint", "unix://" + c.Address, "--image-endpoint", "unix://" + c.Address, "--timeout", "120s"}, args...)
	cmd := exec.CommandContext(ctx, c.crictl, full...)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// CrictlOK runs crictl and returns its trimmed stdout, or an error with
// its output.
func (c *CRIO) CrictlOK(ctx context.Context, args ...string) (string, error) {
	res, err := c.Crictl(ctx, args...)
	if err != nil {
		return "", err
	}
	if res.ExitCode != 0 {
		return "", fmt.Errorf("crictl %s: exit %d: %s%s", strings.Join(args, " "), res.ExitCode, res.Stderr, res.Stdout)
	}
	return strings.TrimSpace(res.Stdout), nil
}

// WriteJSON writes v as JSON into the instance directory and returns the
// path.
func (c *CRIO) WriteJSON(name string, v any) (string, error) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return "", err
	}
	p := filepath.Join(c.Dir, name)
	return p, os.WriteFile(p, b, 0o600)
}

// FindLeftovers is FindLeftovers for pods of this CRI-O. With ids: their
// QEMU, shims and Kasa directories (FindLeftovers). Always: any process but
// CRI-O in CRI-O's mount namespace (shims, reapers, QEMU, virtiofsd live
// there), any mount under KasaRunDir made there since CRI-O started, and
// pods or containers CRI-O still lists.
func (c *CRIO) FindLeftovers(ctx context.Context, ids ...string) []string {
	var left []string
	if len(ids) > 0 {
		left = FindLeftovers(ctx, nil, ids...)
	}
	if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", c.PID)); err == nil {
		for _, p := range processes() {
			if p.pid == c.PID {
				continue
			}
			if pns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", p.pid)); err == nil && pns == ns {
				left = append(left, fmt.Sprintf("process %d in CRI-O's mount namespace: %s", p.pid, p.cmdline()))
			}
		}
	}
	for id, m := range c.mounts() {
		if !c.baseMounts[id] && within(m, KasaRunDir) {
			left = append(left, "mount in CRI-O's namespace "+m)
		}
	}
	for _, kind := range []string{"pods", "ps"} {
		args := []string{kind, "-q"}
		if kind == "ps" {
			args = append(args, "-a")
		}
		out, err := c.CrictlOK(ctx, args...)
		if err != nil {
			left = append(left, err.Error())
			continue
		}
		for _, id := range strings.Fields(out) {
			left = append(left, fmt.Sprintf("CRI-O still lists %s %s", strings.TrimSuffix(kind, "s"), id))
		}
	}
	return left
}

// mounts are the mounts of CRI-O's mount namespace, by mount id.
func (c *CRIO) mounts() map[string]string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", c.PID))
	if err != nil {
		return nil
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 5 {
			out[f[0]] = unescapeOctal(f[4])
		}
	}
	return out
}

// AssertNoLeftovers fails the test unless, within 15s, nothing of ids is
// left (FindLeftovers).
func (c *CRIO) AssertNoLeftovers(tb testing.TB, ids ...string) {
	tb.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		left := c.FindLeftovers(context.Background(), ids...)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			tb.Errorf("left behind after %v:\n  %s", ids, strings.Join(left, "\n  "))
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

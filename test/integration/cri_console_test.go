//go:build integration

package integration

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/console"
	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/test/ctrtest"
	"github.com/kasa-runtime/kasa/virtcontainers"
)

// kasaBin is this build's bin/kasa.
func kasaBin(t *testing.T) string {
	t.Helper()
	p, _ := filepath.Abs("../../bin/kasa")
	if _, err := os.Stat(p); err != nil {
		ctrtest.Missing(t, "%s (make build)", p)
	}
	return p
}

// kasaExecScript runs script in the guest of sandbox id through `kasa exec`
// from a pipe (the end of the pipe ends the shell) and returns what the
// session printed.
func kasaExecScript(t *testing.T, ctx context.Context, id, script string) []byte {
	t.Helper()
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(cctx, kasaBin(t), "exec", id)
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kasa exec: %v\n%s", err, out)
	}
	return out
}

// TestCRIDebugConsoleAndGuestLog runs one pod with agent.kata
// debug_console_enabled and enable_debug: kasa exec reaches a shell on a
// pty in the pod's VM, from a pipe and from a terminal (raw mode, window
// size), and the guest's log (agent and kernel, debug lines included) is in
// containerd's log with the sandbox id.
func TestCRIDebugConsoleAndGuestLog(t *testing.T) {
	kasa := kasaBin(t)
	c, ctx := startCRIHarness(t, 6*time.Minute, func(o *ctrtest.Options) {
		body, err := os.ReadFile(o.KasaConfigPath)
		if err != nil {
			t.Fatal(err)
		}
		// The harness's file ends with its [agent.kata] table.
		body = append(body, "debug_console_enabled = true\nenable_debug = true\n"...)
		if err := os.WriteFile(o.KasaConfigPath, body, 0o644); err != nil {
			t.Fatal(err)
		}
	})
	podCfg := ctrtest.PodConfig("console")
	podID := runPod(t, ctx, c, podCfg)
	tool := startContainer(t, ctx, c, podID, podCfg, containerConfig("tool", ctrtest.BusyboxImage, []string{"sleep", "3600"}))
	guestRelease := crictl(t, ctx, c, "exec", "--sync", "--timeout", "60", tool, "uname", "-r")
	host, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	if guestRelease == strings.TrimSpace(string(host)) {
		t.Fatalf("the container's kernel is the host's (%s)", guestRelease)
	}

	t.Run("kasa exec from a pipe", func(t *testing.T) {
		// No exit: the end of the pipe ends the shell.
		out := kasaExecScript(t, ctx, podID[:12], "uname -r; tty\n")
		t.Logf("kasa exec output:\n%s", out)
		lines := strings.Split(strings.ReplaceAll(string(out), "\r", ""), "\n")
		var release, tty bool
		for _, l := range lines {
			release = release || l == guestRelease
			tty = tty || strings.HasPrefix(l, "/dev/pts/")
		}
		if !release || !tty {
			t.Errorf("want the guest's release %q and a /dev/pts tty, got:\n%s", guestRelease, out)
		}
	})

	t.Run("kasa exec on a terminal", func(t *testing.T) {
		pty, slavePath, err := console.NewPty()
		if err != nil {
			t.Fatal(err)
		}
		defer pty.Close()
		if err := pty.Resize(console.WinSize{Height: 37, Width: 101}); err != nil {
			t.Fatal(err)
		}
		slave, err := os.OpenFile(slavePath, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(cctx, kasa, "exec", podID)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		// As from a login: the terminal is kasa exec's controlling one, so
		// a resize signals it.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer slave.Close()
		var mu sync.Mutex
		var out bytes.Buffer
		readDone := make(chan struct{})
		go func() {
			defer close(readDone)
			buf := make([]byte, 4096)
			for {
				n, err := pty.Read(buf)
				mu.Lock()
				out.Write(buf[:n])
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
		// The guest's pty takes the terminal's size, then a change of it.
		pty.Write([]byte("stty size\n"))
		waitOutput(t, cctx, &mu, &out, "37 101")
		if err := pty.Resize(console.WinSize{Height: 25, Width: 80}); err != nil {
			t.Fatal(err)
		}
		pty.Write([]byte("stty size; exit\n"))
		waitOutput(t, cctx, &mu, &out, "25 80")
		if err := cmd.Wait(); err != nil {
			t.Errorf("kasa exec: %v", err)
		}
		// kasa exec put the terminal back as it found it: not raw.
		tio, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
		if err != nil {
			t.Fatal(err)
		}
		if tio.Lflag&unix.ICANON == 0 || tio.Lflag&unix.ECHO == 0 {
			t.Errorf("the terminal stayed raw after kasa exec: lflag %#x", tio.Lflag)
		}
	})

	t.Run("guest log in containerd's log", func(t *testing.T) {
		assertGuestLog(t, c.LogPath, map[string]*regexp.Regexp{
			// The agent's line at the container's creation, at info.
			"agent": guestLogLine("container created container="+tool, podID, "agent"),
			// enable_debug: the agent's debug lines and the kernel's
			// notice lines (its banner) are sent too.
			"agent debug":   guestLogLine("guest clock set", podID, "agent"),
			"kernel banner": guestLogLine("Linux version ", podID, "kernel"),
		})
		b, _ := os.ReadFile(c.LogPath)
		n := map[string]int{}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, "sandbox="+podID) {
				for _, src := range []string{"agent", "kernel", "guest"} {
					if strings.HasSuffix(l, "source="+src) || strings.Contains(l, "source="+src+" ") {
						n[src]++
					}
				}
			}
		}
		t.Logf("guest lines of this pod in containerd's log so far: %v (enable_debug)", n)
	})

	crictl(t, ctx, c, "stopp", podID)
	crictl(t, ctx, c, "rmp", podID)
	ctrtest.AssertNoLeftovers(t, c, podID, tool)
}

// waitOutput waits until out contains want.
func waitOutput(t *testing.T, ctx context.Context, mu *sync.Mutex, out *bytes.Buffer, want string) {
	t.Helper()
	for {
		mu.Lock()
		got := out.String()
		mu.Unlock()
		if strings.Contains(got, want) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no %q in the console's output:\n%q", want, got)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// guestLogLine matches a guest's line in containerd's log: its message
// starts with msg, and the shim tagged it with the sandbox and source.
func guestLogLine(msg, sandbox, source string) *regexp.Regexp {
	return regexp.MustCompile(`msg="` + regexp.QuoteMeta(msg) + `[^"]*".*sandbox=` + sandbox + `.*source=` + source)
}

// assertGuestLog waits (30 s at most: the shim logs asynchronously) for a
// line matching each of want in containerd's log at path.
func assertGuestLog(t *testing.T, path string, want map[string]*regexp.Regexp) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for name, re := range want {
		for {
			b, _ := os.ReadFile(path)
			if re.Match(b) {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%s: no line matching %s in containerd's log", name, re)
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// assertDebugConsoleRefused checks that kasa exec refuses a pod started
// without debug_console_enabled, naming the key.
func assertDebugConsoleRefused(t *testing.T, ctx context.Context, podID string) {
	t.Helper()
	out, err := exec.CommandContext(ctx, kasaBin(t), "exec", podID).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "debug console of sandbox "+podID+" is disabled: set debug_console_enabled = true in [agent.kata]") {
		t.Errorf("kasa exec into a pod without the console: %v\n%s", err, out)
	}
}

// assertGuestPortsByDefault checks a guest booted with the default
// configuration: its log stream (vsock port 1025) answers with the agent's
// lines, and no debug console listens (port 1027).
func assertGuestPortsByDefault(t *testing.T, ctx context.Context, vm *virtcontainers.VM) {
	t.Helper()
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if c, err := vm.DialGuest(dctx, api.DebugConsoleVsockPort); err == nil {
		c.Close()
		t.Errorf("the guest listens on the debug console's port %d without debug_console_enabled", api.DebugConsoleVsockPort)
	}
	c, err := vm.DialGuest(dctx, api.GuestLogVsockPort)
	if err != nil {
		t.Fatalf("guest log port %d: %v", api.GuestLogVsockPort, err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("guest log stream ended without the agent's ready line: %v", err)
		}
		if strings.HasPrefix(line, "a6 kasa-agent ready") {
			return
		}
	}
}

//go:build integration

package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/kasa-runtime/kasa/test/ctrtest"
	"github.com/kasa-runtime/kasa/virtcontainers/portforward"
)

// portForward runs `crictl port-forward pod 0:remote` and returns the
// local port it listens on; the command ends with the test.
func portForward(t *testing.T, ctx context.Context, c *ctrtest.Containerd, podID string, remote int) (int, *exec.Cmd) {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	local := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := c.CrictlCommand(ctx, "port-forward", podID, fmt.Sprintf("%d:%d", local, remote))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ready := make(chan struct{})
	var mu sync.Mutex
	var lines []string
	go func() {
		sc := bufio.NewScanner(out)
		signalled := false
		for sc.Scan() {
			mu.Lock()
			if len(lines) < 200 {
				lines = append(lines, sc.Text())
			}
			mu.Unlock()
			if !signalled && strings.Contains(sc.Text(), "Forwarding from") {
				close(ready)
				signalled = true
			}
		}
	}()
	t.Cleanup(func() {
		if t.Failed() {
			mu.Lock()
			t.Logf("crictl port-forward %d:%d said:\n%s", local, remote, strings.Join(lines, "\n"))
			mu.Unlock()
		}
	})
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		t.Fatalf("crictl port-forward %d:%d did not start", local, remote)
	}
	return local, cmd
}

// podNetNS is the network namespace path of a pod (crictl inspectp).
func podNetNS(t *testing.T, ctx context.Context, c *ctrtest.Containerd, podID string) string {
	t.Helper()
	var st struct {
		Info struct {
			RuntimeSpec struct {
				Linux struct {
					Namespaces []struct{ Type, Path string } `json:"namespaces"`
				} `json:"linux"`
			} `json:"runtimeSpec"`
		} `json:"info"`
	}
	if err := json.Unmarshal([]byte(crictl(t, ctx, c, "inspectp", podID)), &st); err != nil {
		t.Fatal(err)
	}
	for _, ns := range st.Info.RuntimeSpec.Linux.Namespaces {
		if ns.Type == "network" && ns.Path != "" {
			return ns.Path
		}
	}
	t.Fatal("pod has no network namespace path")
	return ""
}

// dialInNetNS connects to addr from inside the network namespace at path,
// on a thread that then goes back to the test's own namespace.
func dialInNetNS(path, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			done <- result{nil, err}
			return
		}
		defer orig.Close()
		target, err := netns.GetFromPath(path)
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{nil, err}
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			done <- result{nil, err}
			return
		}
		c, err := net.DialTimeout("tcp4", addr, 10*time.Second)
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		done <- result{c, err}
	}()
	r := <-done
	return r.c, r.err
}

// inNetNS runs a command in the network namespace f is open on.
func inNetNS(f *os.File, args ...string) (string, error) {
	out, err := exec.Command("nsenter", append([]string{fmt.Sprintf("--net=/proc/%d/fd/%d", os.Getpid(), f.Fd()), "--"}, args...)...).CombinedOutput()
	return string(out), err
}

// TestCRIPortForward: crictl port-forward reaches servers inside the VM,
// on IPv4 and on IPv6 only, with 50 concurrent connections; a closed port
// ends the client's connection at once (50 concurrent ones, dialed in the
// pod's netns as containerd does, are each reset); after stopp the pod's
// netns holds neither the forwarder's rules nor its listener.
func TestCRIPortForward(t *testing.T) {
	c, ctx := startCRIHarness(t, 5*time.Minute, nil)
	podCfg := ctrtest.PodConfig("portfwd")
	podCfg["log_directory"] = t.TempDir()
	podID := runPod(t, ctx, c, podCfg)
	startContainer(t, ctx, c, podID, podCfg, containerConfig("web", ctrtest.BusyboxImage,
		[]string{"sh", "-c", "mkdir -p /www && echo hello-from-the-vm > /www/index.html && dd if=/dev/zero of=/www/big bs=1M count=32 2>/dev/null && httpd -p 127.0.0.1:8080 -h /www && httpd -p [::1]:8081 -h /www && sleep 100000"}))

	get := func(port int) (time.Duration, error) {
		client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		start := time.Now()
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err == nil && strings.TrimSpace(string(b)) != "hello-from-the-vm" {
			err = fmt.Errorf("body %q", b)
		}
		return time.Since(start), err
	}
	// The servers may still be starting.
	local4, _ := portForward(t, ctx, c, podID, 8080)
	var err error
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		if _, err = get(local4); err == nil || time.Now().After(deadline) {
			break
		}
		local4, _ = portForward(t, ctx, c, podID, 8080) // an error ends crictl's session
	}
	if err != nil {
		t.Fatalf("GET through port-forward: %v", err)
	}

	t.Run("50 concurrent", func(t *testing.T) {
		const n = 50
		var wg sync.WaitGroup
		var mu sync.Mutex
		var lat []time.Duration
		start := time.Now()
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				d, err := get(local4)
				if err != nil {
					t.Errorf("GET %d: %v", i, err)
					return
				}
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			}(i)
		}
		wg.Wait()
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		if len(lat) == n {
			t.Logf("%d concurrent GETs through crictl port-forward in %v: median %v, max %v", n, time.Since(start).Round(time.Millisecond), lat[n/2].Round(time.Millisecond), lat[n-1].Round(time.Millisecond))
		}
		var seq []time.Duration
		for i := 0; i < 10; i++ {
			d, err := get(local4)
			if err != nil {
				t.Fatal(err)
			}
			seq = append(seq, d)
		}
		sort.Slice(seq, func(i, j int) bool { return seq[i] < seq[j] })
		t.Logf("sequential GETs (new connection each): median %v", seq[5].Round(time.Millisecond))
	})
	t.Run("throughput", func(t *testing.T) {
		start := time.Now()
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/big", local4))
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		d := time.Since(start)
		if err != nil || n != 32<<20 {
			t.Fatalf("GET /big: %d bytes, %v", n, err)
		}
		t.Logf("32 MiB from the guest through crictl port-forward in %v: %.1f MiB/s", d.Round(time.Millisecond), 32/d.Seconds())
	})
	t.Run("direct in the netns", func(t *testing.T) {
		// As containerd dials, without crictl and containerd's streaming in
		// between: the forwarder and the guest alone.
		path := podNetNS(t, ctx, c, podID)
		get := func(port int) (time.Duration, error) {
			start := time.Now()
			conn, err := dialInNetNS(path, fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				return 0, err
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(30 * time.Second))
			fmt.Fprintf(conn, "GET / HTTP/1.0\r\n\r\n")
			b, err := io.ReadAll(conn)
			if err == nil && !strings.Contains(string(b), "hello-from-the-vm") {
				err = fmt.Errorf("response %q", b)
			}
			return time.Since(start), err
		}
		var seq []time.Duration
		for i := 0; i < 10; i++ {
			d, err := get(8080)
			if err != nil {
				t.Fatal(err)
			}
			seq = append(seq, d)
		}
		var refused []time.Duration
		for i := 0; i < 10; i++ {
			start := time.Now()
			conn, err := dialInNetNS(path, "127.0.0.1:9")
			if err == nil {
				conn.SetDeadline(time.Now().Add(10 * time.Second))
				_, err = conn.Read(make([]byte, 1))
				conn.Close()
			}
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("closed port: %v, want a reset", err)
			}
			refused = append(refused, time.Since(start))
		}
		const n = 50
		var wg sync.WaitGroup
		start := time.Now()
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := get(8080); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		med := func(ds []time.Duration) time.Duration {
			sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
			return ds[len(ds)/2].Round(100 * time.Microsecond)
		}
		t.Logf("in the pod netns: GET median %v sequential; reset of a closed port median %v (vsock stream + guest connect + answer); %d concurrent GETs in %v",
			med(seq), med(refused), n, time.Since(start).Round(time.Millisecond))
	})
	t.Run("IPv6 only", func(t *testing.T) {
		local6, _ := portForward(t, ctx, c, podID, 8081)
		if _, err := get(local6); err != nil {
			t.Errorf("GET of a server on [::1] only: %v", err)
		}
	})
	t.Run("closed port", func(t *testing.T) {
		// Through crictl: the error comes back at once, and crictl ends
		// the session (client-go closes it on a forwarding error). With
		// many connections in flight client-go may keep the others open
		// while it shuts down, for runc pods alike, so the 50 concurrent
		// ones dial in the pod's netns as containerd does.
		local, cmd := portForward(t, ctx, c, podID, 9)
		start := time.Now()
		conn, err := net.DialTimeout("tcp4", fmt.Sprintf("127.0.0.1:%d", local), 5*time.Second)
		if err == nil {
			conn.SetDeadline(time.Now().Add(15 * time.Second))
			n, err := conn.Read(make([]byte, 1))
			conn.Close()
			if n > 0 || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("crictl port-forward to a closed port: read %d bytes, %v; want it closed", n, err)
			}
		}
		t.Logf("crictl port-forward to a closed port: connection ended after %v", time.Since(start).Round(time.Millisecond))
		cmd.Process.Kill()

		path := podNetNS(t, ctx, c, podID)
		const n = 50
		var wg sync.WaitGroup
		start = time.Now()
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				conn, err := dialInNetNS(path, "127.0.0.1:9")
				if err == nil {
					conn.SetDeadline(time.Now().Add(15 * time.Second))
					_, err = conn.Read(make([]byte, 1))
					conn.Close()
				}
				if !errors.Is(err, syscall.ECONNRESET) {
					t.Errorf("conn %d to a closed port in the netns: %v, want a reset", i, err)
				}
			}(i)
		}
		wg.Wait()
		d := time.Since(start)
		t.Logf("%d concurrent connections to a closed port in the netns all reset within %v", n, d.Round(time.Millisecond))
		if d > 10*time.Second {
			t.Errorf("resetting took %v", d)
		}
	})
	t.Run("nothing left in the netns", func(t *testing.T) {
		// Hold the netns so that it outlives stopp for the check.
		nsf, err := os.Open(podNetNS(t, ctx, c, podID))
		if err != nil {
			t.Fatal(err)
		}
		defer nsf.Close()
		if out, err := inNetNS(nsf, "iptables", "-w", "5", "-t", "nat", "-S"); err != nil || !strings.Contains(out, portforward.Chain) {
			t.Fatalf("before stopp, no %s chain: %v\n%s", portforward.Chain, err, out)
		}
		crictl(t, ctx, c, "stopp", podID)
		for _, ipt := range []string{"iptables", "ip6tables"} {
			if out, err := inNetNS(nsf, ipt, "-w", "5", "-t", "nat", "-S"); err != nil || strings.Contains(out, portforward.Chain) || strings.Contains(out, "REDIRECT") {
				t.Errorf("after stopp, %s -t nat -S: %v\n%s", ipt, err, out)
			}
		}
		if out, err := inNetNS(nsf, "cat", "/proc/net/tcp", "/proc/net/tcp6"); err != nil || strings.Contains(out, " 0A ") {
			t.Errorf("after stopp, a TCP listener is left in the netns: %v\n%s", err, out)
		}
	})
	crictl(t, ctx, c, "rmp", "-f", podID)
	ctrtest.AssertNoLeftovers(t, c, podID)
}

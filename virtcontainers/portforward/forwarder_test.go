// Tests named *Integration* need root: they make network namespaces and
// run iptables in them.
package portforward

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/kasa-runtime/kasa/agent/api"
)

// newNetNS makes a named network namespace for the test, with lo down as
// a fresh one has it, and removes it at the end.
func newNetNS(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace")
	}
	if _, err := iptablesFor(false); err != nil {
		t.Skip(err)
	}
	name := fmt.Sprintf("kasa-pf-%d-%s", os.Getpid(), strings.ReplaceAll(strings.ToLower(t.Name()), "/", "-"))
	if len(name) > 60 {
		name = name[:60]
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		h, err := netns.NewNamed(name)
		if err == nil {
			h.Close()
		}
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Skipf("cannot create a network namespace: %v", err)
	}
	t.Cleanup(func() { netns.DeleteNamed(name) })
	return filepath.Join("/run/netns", name)
}

// fakeGuest is the agent's port-forward service in miniature: it connects
// to 127.0.0.1/[::1]:PORT of the test's own netns (the "guest").
type fakeGuest struct {
	stall bool // read the request, never answer
	mu    sync.Mutex
	reqs  int
}

func (g *fakeGuest) dial(ctx context.Context) (net.Conn, error) {
	a, b, err := socketPair()
	if err != nil {
		return nil, err
	}
	go g.serve(b)
	return a, nil
}

func socketPair() (*net.UnixConn, *net.UnixConn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "pair")
		defer f.Close()
		c, _ := net.FileConn(f)
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1]), nil
}

func (g *fakeGuest) serve(c *net.UnixConn) {
	defer c.Close()
	buf := make([]byte, api.PortForwardRequestSize)
	if _, err := io.ReadFull(c, buf); err != nil {
		return
	}
	g.mu.Lock()
	g.reqs++
	g.mu.Unlock()
	req, err := api.DecodePortForwardRequest(buf)
	if err != nil {
		c.Write(api.PortForwardReply{Status: api.PortForwardBadRequest}.Encode())
		return
	}
	if g.stall {
		io.Copy(io.Discard, c)
		return
	}
	host := "127.0.0.1"
	if req.Family == api.PortForwardIPv6 {
		host = "::1"
	}
	t, err := net.Dial("tcp", net.JoinHostPort(host, strconv.Itoa(int(req.Port))))
	if err != nil {
		c.Write(api.PortForwardReply{Status: api.PortForwardRefused}.Encode())
		return
	}
	defer t.Close()
	c.Write(api.PortForwardReply{Status: api.PortForwardOK, Family: req.Family}.Encode())
	splice(c, t)
}

// echoServer echoes every connection until its client half-closes.
func echoServer(t *testing.T, network, addr string) int {
	t.Helper()
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}

// closedPort is a port nothing listens on in the test's netns.
func closedPort(t *testing.T) int {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return p
}

// dialIn connects to addr from inside the netns at path, as containerd does.
func dialIn(path, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNetNS(path, func() error {
		var err error
		c, err = net.DialTimeout(network, addr, 5*time.Second)
		return err
	})
	return c, err
}

// roundTrip sends size random bytes, half-closes and reads the echo back.
func roundTrip(c net.Conn, size int) error {
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	data := make([]byte, size)
	rand.Read(data)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if err := <-werr; err != nil {
		return err
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("echo of %d bytes came back as %d other bytes", size, len(got))
	}
	return nil
}

func natRules(t *testing.T, path string, v6 bool) string {
	t.Helper()
	var out []byte
	err := inNetNS(path, func() error {
		bin, _ := iptablesFor(v6)
		var err error
		out, err = exec.Command(bin, "-w", "5", "-t", "nat", "-S").CombinedOutput()
		return err
	})
	if err != nil {
		t.Fatalf("iptables -S: %v: %s", err, out)
	}
	return string(out)
}

func startForwarder(t *testing.T, path string, g *fakeGuest, mutate func(*Config)) *Forwarder {
	t.Helper()
	cfg := Config{NetNS: path, Dial: g.dial}
	if mutate != nil {
		mutate(&cfg)
	}
	f, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Stop() })
	return f
}

// Fifty concurrent connections to a served port come back intact, over
// IPv4 and IPv6; fifty to a closed port are each reset at once; Stop
// leaves no rule and no listener in the netns.
func TestIntegrationForwardConcurrent(t *testing.T) {
	path := newNetNS(t)
	open := echoServer(t, "tcp4", "127.0.0.1:0")
	open6 := echoServer(t, "tcp6", "[::1]:0")
	closed := closedPort(t)
	f := startForwarder(t, path, &fakeGuest{}, nil)
	if !strings.Contains(natRules(t, path, false), Chain) {
		t.Fatalf("no %s chain in the netns", Chain)
	}
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, 3*n)
	setup := make(chan time.Duration, n)
	for i := 0; i < n; i++ {
		wg.Add(3)
		go func(i int) {
			defer wg.Done()
			start := time.Now()
			c, err := dialIn(path, "tcp4", fmt.Sprintf("127.0.0.1:%d", open))
			if err == nil {
				// The first echoed byte: the connection reaches the server.
				c.SetDeadline(time.Now().Add(10 * time.Second))
				b := []byte{byte(i)}
				if _, err = c.Write(b); err == nil {
					_, err = io.ReadFull(c, b)
				}
				setup <- time.Since(start)
				c.Close()
			}
			if err == nil {
				c, err = dialIn(path, "tcp4", fmt.Sprintf("127.0.0.1:%d", open))
			}
			if err == nil {
				err = roundTrip(c, 256<<10)
			}
			if err != nil {
				errs <- fmt.Errorf("open port, conn %d: %w", i, err)
			}
		}(i)
		go func(i int) {
			defer wg.Done()
			if !f.IPv6() {
				return
			}
			c, err := dialIn(path, "tcp6", fmt.Sprintf("[::1]:%d", open6))
			if err == nil {
				err = roundTrip(c, 64<<10)
			}
			if err != nil {
				errs <- fmt.Errorf("IPv6, conn %d: %w", i, err)
			}
		}(i)
		go func(i int) {
			defer wg.Done()
			start := time.Now()
			c, err := dialIn(path, "tcp4", fmt.Sprintf("127.0.0.1:%d", closed))
			if err != nil {
				return // refused at connect is as good
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			_, err = c.Read(make([]byte, 1))
			if !errors.Is(err, syscall.ECONNRESET) {
				errs <- fmt.Errorf("closed port, conn %d: read %v, want a reset", i, err)
			} else if d := time.Since(start); d > 3*time.Second {
				errs <- fmt.Errorf("closed port, conn %d: reset after %v", i, d)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	close(setup)
	for err := range errs {
		t.Error(err)
	}
	var ds []time.Duration
	for d := range setup {
		ds = append(ds, d)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	if len(ds) > 0 {
		t.Logf("forwarded connection to first echoed byte, %d concurrent: median %v, max %v", len(ds), ds[len(ds)/2], ds[len(ds)-1])
	}
	st := f.Stats()
	t.Logf("stats %+v, IPv6 %v", st, f.IPv6())
	if st.Refused != n || st.Open != 0 {
		t.Errorf("stats %+v: want %d refused, none open", st, n)
	}

	port := f.Port()
	if err := f.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, v6 := range []bool{false, true} {
		if r := natRules(t, path, v6); strings.Contains(r, Chain) || strings.Contains(r, "REDIRECT") {
			t.Errorf("after Stop (v6 %v) the netns still has:\n%s", v6, r)
		}
	}
	if c, err := dialIn(path, "tcp4", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
		c.Close()
		t.Error("the listener still accepts after Stop")
	}
	if c, err := dialIn(path, "tcp4", fmt.Sprintf("127.0.0.1:%d", open)); err == nil {
		c.Close()
		t.Error("connections are still redirected after Stop")
	}
}

// A forwarder's shim that died leaves rules; Cleanup removes them, twice.
func TestIntegrationCleanupAfterCrash(t *testing.T) {
	path := newNetNS(t)
	f := startForwarder(t, path, &fakeGuest{}, nil)
	_ = f
	if err := Cleanup(path); err != nil {
		t.Fatal(err)
	}
	if err := Cleanup(path); err != nil {
		t.Fatal(err)
	}
	for _, v6 := range []bool{false, true} {
		if r := natRules(t, path, v6); strings.Contains(r, Chain) {
			t.Errorf("after Cleanup (v6 %v):\n%s", v6, r)
		}
	}
	if err := Cleanup("/run/netns/kasa-does-not-exist"); err != nil {
		t.Errorf("Cleanup of a gone netns: %v", err)
	}
}

// A guest that never answers holds a client no longer than the handshake
// timeout; the cap on connections resets the ones beyond it at once.
func TestIntegrationHostileGuestBounds(t *testing.T) {
	path := newNetNS(t)
	open := echoServer(t, "tcp4", "127.0.0.1:0")
	f := startForwarder(t, path, &fakeGuest{stall: true}, func(c *Config) {
		c.HandshakeTimeout = 500 * time.Millisecond
		c.MaxConns = 2
	})
	var held []net.Conn
	for i := 0; i < 2; i++ {
		c, err := dialIn(path, "tcp4", fmt.Sprintf("127.0.0.1:%d", open))
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	time.Sleep(100 * time.Millisecond) // both accepted and waiting for the guest
	start := time.Now()
	c, err := dialIn(path, "tcp4", fmt.Sprintf("127.0.0.1:%d", open))
	if err == nil {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if !errors.Is(err, syscall.ECONNRESET) || time.Since(start) > 300*time.Millisecond {
		t.Errorf("connection beyond the cap: %v after %v, want an immediate reset", err, time.Since(start))
	}
	for i, c := range held {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err := c.Read(make([]byte, 1))
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("held connection %d with a stalled guest: %v, want a reset", i, err)
		}
		c.Close()
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("stalled handshakes ended after %v", d)
	}
	if st := f.Stats(); st.Failed != 3 {
		t.Errorf("stats %+v: want 3 failed", st)
	}
}

// A client that dials the listener's own port, unredirected, is reset.
func TestIntegrationDirectDialRefused(t *testing.T) {
	path := newNetNS(t)
	f := startForwarder(t, path, &fakeGuest{}, nil)
	c, err := dialIn(path, "tcp4", fmt.Sprintf("127.0.0.1:%d", f.Port()))
	if errors.Is(err, syscall.ECONNRESET) {
		return // reset before connect returned
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("direct dial: %v, want a reset", err)
	}
}

// The shim's own netns (the node's) is never given rules.
func TestRefusesOwnNetNS(t *testing.T) {
	if _, err := Start(context.Background(), Config{NetNS: "/proc/self/ns/net", Dial: (&fakeGuest{}).dial}); err == nil || !strings.Contains(err.Error(), "shim's own") {
		t.Fatalf("Start in the shim's netns: %v", err)
	}
}

// Package portforward makes containerd's PortForward reach a VM pod.
//
// containerd serves PortForward by dialing localhost:PORT inside the pod's
// network namespace on the node, where nothing of a VM pod listens. The
// Forwarder listens there on one port of 127.0.0.1 and [::1] and adds a nat
// rule (chain Chain) that redirects TCP to either loopback address, any
// other port, to that listener. For each connection it reads the original
// port (SO_ORIGINAL_DST), opens a vsock stream to the agent's port-forward
// service (agent/api/portforward.md), which connects to localhost:PORT in
// the guest, and then copies bytes both ways. A port nothing listens on in
// the guest gets the client's connection reset at once.
package portforward

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/agent/api"
)

const (
	// DefaultMaxConns is Config.MaxConns when unset: the forwarded
	// connections of one pod open at once. The VM's vsock carries at most
	// 1024 streams, the agent's own among them.
	DefaultMaxConns = 256
	// DefaultHandshakeTimeout is Config.HandshakeTimeout when unset: longer
	// than the agent gives a connect (20 s, for a server whose accept queue
	// is full), so that a slow server is not cut short by the host.
	DefaultHandshakeTimeout = 30 * time.Second
	// bufSize is each direction's copy buffer.
	bufSize = 32 << 10
)

// Config describes a forwarder.
type Config struct {
	// NetNS is the pod's network namespace path.
	NetNS string
	// Dial opens a stream to the guest's port-forward service.
	Dial func(ctx context.Context) (net.Conn, error)
	// MaxConns caps the connections being forwarded at once; a connection
	// beyond it is reset. 0 means DefaultMaxConns.
	MaxConns int
	// HandshakeTimeout bounds opening the stream and the agent's answer.
	// 0 means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
}

// Stats count a forwarder's connections.
type Stats struct {
	Accepted, Forwarded, Refused, Failed, Open int64
}

// Forwarder is one pod's port forwarding: listeners and nat rules in its
// network namespace.
type Forwarder struct {
	cfg    Config
	port   int
	ls     []*net.TCPListener
	v6     bool
	sem    chan struct{}
	ctx    context.Context
	cancel context.CancelFunc

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
	once  sync.Once
	err   error

	accepted, forwarded, refused, failed, open atomic.Int64
}

// Start listens in cfg.NetNS and installs the redirect. On error nothing is
// left in the netns.
func Start(ctx context.Context, cfg Config) (_ *Forwarder, retErr error) {
	if cfg.NetNS == "" || cfg.Dial == nil {
		return nil, errors.New("port-forward: need a netns and a dialer")
	}
	if same, err := sameNetNS(cfg.NetNS, "/proc/thread-self/ns/net"); err != nil || same {
		if err == nil {
			err = errors.New("it is the shim's own, not a pod's")
		}
		return nil, fmt.Errorf("port-forward in netns %s: %w", cfg.NetNS, err)
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	f := &Forwarder{cfg: cfg, sem: make(chan struct{}, cfg.MaxConns), conns: map[net.Conn]struct{}{}}
	f.ctx, f.cancel = context.WithCancel(context.WithoutCancel(ctx))
	var v6err error
	err := inNetNS(cfg.NetNS, func() error {
		if err := ensureLoopbackUp(); err != nil {
			return err
		}
		l4, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return err
		}
		f.ls = append(f.ls, l4)
		f.port = l4.Addr().(*net.TCPAddr).Port
		if err := install(false, f.port); err != nil {
			return err
		}
		// IPv6 is optional: the netns may have it disabled.
		l6, err := net.ListenTCP("tcp6", &net.TCPAddr{IP: net.IPv6loopback, Port: f.port})
		if err != nil {
			v6err = err
			return nil
		}
		if err := install(true, f.port); err != nil {
			l6.Close()
			v6err = err
			return nil
		}
		f.ls = append(f.ls, l6)
		f.v6 = true
		return nil
	})
	if err != nil {
		for _, l := range f.ls {
			l.Close()
		}
		if cerr := Cleanup(cfg.NetNS); cerr != nil {
			log.G(ctx).WithError(cerr).Warn("port-forward: removing the redirect after a failed start")
		}
		f.cancel()
		return nil, fmt.Errorf("port-forward in netns %s: %w", cfg.NetNS, err)
	}
	if v6err != nil {
		log.G(ctx).WithError(v6err).Info("port-forward: IPv4 only")
	}
	for _, l := range f.ls {
		f.wg.Add(1)
		go f.serve(l)
	}
	return f, nil
}

// sameNetNS says whether two paths name one network namespace.
func sameNetNS(a, b string) (bool, error) {
	var sa, sb unix.Stat_t
	if err := unix.Stat(a, &sa); err != nil {
		return false, err
	}
	if err := unix.Stat(b, &sb); err != nil {
		return false, err
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino, nil
}

// ensureLoopbackUp brings lo up in the current netns, as CNI's loopback
// plugin would: without it there is no 127.0.0.1 to listen on.
func ensureLoopbackUp() error {
	ifi, err := net.InterfaceByName("lo")
	if err != nil {
		return err
	}
	if ifi.Flags&net.FlagUp != 0 {
		return nil
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	req, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, req); err != nil {
		return err
	}
	req.SetUint16(req.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, req)
}

// Port is the listeners' port in the pod's netns.
func (f *Forwarder) Port() int { return f.port }

// IPv6 says whether [::1] is forwarded too.
func (f *Forwarder) IPv6() bool { return f.v6 }

// Stats returns the forwarder's counters.
func (f *Forwarder) Stats() Stats {
	return Stats{Accepted: f.accepted.Load(), Forwarded: f.forwarded.Load(), Refused: f.refused.Load(), Failed: f.failed.Load(), Open: f.open.Load()}
}

// Stop removes the redirect, closes the listeners and every forwarded
// connection, and waits for them. Idempotent; nil-safe.
func (f *Forwarder) Stop() error {
	if f == nil {
		return nil
	}
	f.once.Do(func() {
		f.err = Cleanup(f.cfg.NetNS)
		f.cancel()
		for _, l := range f.ls {
			l.Close()
		}
		f.mu.Lock()
		for c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f.err
}

func (f *Forwarder) serve(l *net.TCPListener) {
	defer f.wg.Done()
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and the like: back off rather than spin.
			log.G(f.ctx).WithError(err).Warn("port-forward: accept")
			select {
			case <-f.ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		f.accepted.Add(1)
		select {
		case f.sem <- struct{}{}:
		default:
			f.failed.Add(1)
			reset(c)
			continue
		}
		if !f.track(c) {
			<-f.sem
			reset(c)
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer func() { <-f.sem }()
			defer f.untrack(c)
			f.forward(c)
		}()
	}
}

// track registers a connection for Stop to close; false once Stop began.
func (f *Forwarder) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ctx.Err() != nil {
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *Forwarder) untrack(c net.Conn) {
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
}

// reset closes c with an RST, which the client sees as a refusal.
func reset(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}

func (f *Forwarder) forward(c *net.TCPConn) {
	port, v6, err := originalDst(c)
	if err != nil {
		// Not redirected: someone dialed the listener's own port.
		f.failed.Add(1)
		reset(c)
		return
	}
	logger := log.G(f.ctx).WithField("port", port)
	fam := api.PortForwardIPv4
	if v6 {
		fam = api.PortForwardIPv6
	}
	g, status, err := f.handshake(port, fam)
	if err != nil || status != api.PortForwardOK {
		if err != nil {
			f.failed.Add(1)
			logger.WithError(err).Warn("port-forward: guest stream")
		} else {
			f.refused.Add(1)
			logger.WithField("status", status).Debug("port-forward: refused in the guest")
		}
		reset(c)
		return
	}
	f.mu.Lock()
	if f.ctx.Err() != nil {
		f.mu.Unlock()
		g.Close()
		reset(c)
		return
	}
	f.conns[g] = struct{}{}
	f.mu.Unlock()
	defer f.untrack(g)
	defer g.Close()
	defer c.Close()
	f.forwarded.Add(1)
	f.open.Add(1)
	defer f.open.Add(-1)
	if !splice(c, g) {
		c.SetLinger(0) // an aborted stream is an aborted connection
	}
}

// handshake dials the guest's service and runs the handshake, within the
// handshake timeout whatever the guest does.
func (f *Forwarder) handshake(port int, fam api.PortForwardFamily) (net.Conn, api.PortForwardStatus, error) {
	ctx, cancel := context.WithTimeout(f.ctx, f.cfg.HandshakeTimeout)
	defer cancel()
	g, err := f.cfg.Dial(ctx)
	if err != nil {
		return nil, 0, err
	}
	dl, _ := ctx.Deadline()
	g.SetDeadline(dl)
	// Stop closes g through ctx while it is not tracked yet.
	stop := context.AfterFunc(ctx, func() { g.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := g.Write(api.PortForwardRequest{Family: fam, Port: uint16(port)}.Encode()); err != nil {
		g.Close()
		return nil, 0, err
	}
	buf := make([]byte, api.PortForwardReplySize)
	if _, err := io.ReadFull(g, buf); err != nil {
		g.Close()
		return nil, 0, fmt.Errorf("reading the agent's answer: %w", err)
	}
	reply, err := api.DecodePortForwardReply(buf)
	if err != nil {
		g.Close()
		return nil, 0, err
	}
	if reply.Status != api.PortForwardOK {
		g.Close()
		return nil, reply.Status, nil
	}
	if !stop() {
		g.Close()
		return nil, 0, ctx.Err()
	}
	g.SetDeadline(time.Time{})
	return g, api.PortForwardOK, nil
}

type closeWriter interface{ CloseWrite() error }

// splice copies a → b and b → a until both directions end, passing each
// end of stream on as a half-close. An error in either direction aborts
// both; it then returns false. It closes neither connection.
func splice(a, b net.Conn) bool {
	var wg sync.WaitGroup
	var once sync.Once
	ok := true
	abort := func() {
		once.Do(func() {
			ok = false
			a.SetDeadline(time.Unix(1, 0))
			b.SetDeadline(time.Unix(1, 0))
		})
	}
	half := func(dst, src net.Conn) {
		defer wg.Done()
		// The wrapper keeps io.Copy from ReadFrom/WriteTo paths with
		// buffers of their own: bufSize is all a direction holds.
		_, err := io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, make([]byte, bufSize))
		if err == nil {
			if cw, isCW := dst.(closeWriter); isCW && cw.CloseWrite() == nil {
				return
			}
		}
		abort()
	}
	wg.Add(2)
	go half(b, a)
	go half(a, b)
	wg.Wait()
	return ok
}

// originalDst returns the port a redirected connection was sent to and
// whether it came over IPv6.
func originalDst(c *net.TCPConn) (port int, v6 bool, err error) {
	v6 = c.LocalAddr().(*net.TCPAddr).IP.To4() == nil
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, v6, err
	}
	var sa [28]byte // sockaddr_in6, the larger of the two
	var serr error
	err = rc.Control(func(fd uintptr) {
		level := uintptr(unix.SOL_IP)
		if v6 {
			level = unix.SOL_IPV6
		}
		l := uint32(len(sa))
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, level, unix.SO_ORIGINAL_DST, // == IP6T_SO_ORIGINAL_DST
			uintptr(unsafe.Pointer(&sa[0])), uintptr(unsafe.Pointer(&l)), 0)
		if e != 0 {
			serr = e
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return 0, v6, fmt.Errorf("SO_ORIGINAL_DST: %w", err)
	}
	// sockaddr_in and sockaddr_in6 both start with family, then the port
	// in network order.
	fam := binary.NativeEndian.Uint16(sa[:2])
	if (v6 && fam != unix.AF_INET6) || (!v6 && fam != unix.AF_INET) {
		return 0, v6, fmt.Errorf("SO_ORIGINAL_DST: family %d", fam)
	}
	port = int(sa[2])<<8 | int(sa[3])
	if port == 0 {
		return 0, v6, errors.New("SO_ORIGINAL_DST: port 0")
	}
	return port, v6, nil
}

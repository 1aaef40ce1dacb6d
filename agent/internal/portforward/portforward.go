// Package portforward is the agent's port-forward service: each vsock
// stream the host opens on api.PortForwardVsockPort names a TCP port, and
// the agent connects to localhost:PORT in the guest (the pod's network
// namespace) and then carries the connection's bytes over the stream.
// The wire format is agent/api/portforward.md.
package portforward

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/log"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/agent/internal/accept"
)

const (
	// MaxStreams bounds the forwarded streams open at once; beyond it a
	// request is answered PortForwardBusy. The host caps its own side lower.
	MaxStreams = 512
	// requestTimeout bounds reading a request after the stream opens.
	requestTimeout = 10 * time.Second
	// connectTimeout bounds connecting to localhost, both families
	// together. A busy server whose accept queue is full drops SYNs and is
	// reached on a retransmission (1 s, 3 s, 7 s, 15 s): as a plain connect
	// would, give it time. The host waits longer than this for the answer.
	connectTimeout = 20 * time.Second
	// bufSize is the copy buffer of each direction.
	bufSize = 32 << 10
)

// Server serves forwarded streams.
type Server struct {
	// Dial connects to addr ("127.0.0.1:P" or "[::1]:P"); net.Dialer's by default.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)

	// max bounds the streams served at once.
	max int
}

// New returns a server with the default dialer.
func New() *Server {
	var d net.Dialer
	return &Server{Dial: d.DialContext, max: MaxStreams}
}

// Serve handles l's streams until l is closed, then waits for them. A
// stream over the limit is answered busy.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	return accept.Serve(ctx, l, "port-forward", s.max, func(c net.Conn) { s.serveStream(ctx, c) }, func(c net.Conn) {
		c.SetWriteDeadline(time.Now().Add(time.Second))
		c.Write(api.PortForwardReply{Status: api.PortForwardBusy}.Encode())
		c.Close()
	})
}

func (s *Server) serveStream(ctx context.Context, c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(requestTimeout))
	buf := make([]byte, api.PortForwardRequestSize)
	if _, err := io.ReadFull(c, buf); err != nil {
		return
	}
	req, err := api.DecodePortForwardRequest(buf)
	if err != nil {
		log.G(ctx).WithError(err).Debug("port-forward request refused")
		c.Write(api.PortForwardReply{Status: api.PortForwardBadRequest}.Encode())
		return
	}
	target, fam, status := s.connect(ctx, req)
	if _, err := c.Write(api.PortForwardReply{Status: status, Family: fam}.Encode()); err != nil || target == nil {
		if target != nil {
			target.Close()
		}
		return
	}
	defer target.Close()
	c.SetDeadline(time.Time{})
	Splice(c, target)
}

// connect dials localhost:port, the requested family first and then the other.
func (s *Server) connect(ctx context.Context, req api.PortForwardRequest) (net.Conn, api.PortForwardFamily, api.PortForwardStatus) {
	order := []api.PortForwardFamily{api.PortForwardIPv4, api.PortForwardIPv6}
	if req.Family == api.PortForwardIPv6 {
		order[0], order[1] = order[1], order[0]
	}
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	port := strconv.Itoa(int(req.Port))
	status := api.PortForwardUnreachable
	refused := false
	for _, f := range order {
		network, host := "tcp4", "127.0.0.1"
		if f == api.PortForwardIPv6 {
			network, host = "tcp6", "::1"
		}
		c, err := s.Dial(ctx, network, net.JoinHostPort(host, port))
		if err == nil {
			return c, f, api.PortForwardOK
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			refused = true
		}
	}
	// A guest without IPv6 fails ::1 otherwise; a refusal on the other
	// family is still the answer.
	if refused {
		status = api.PortForwardRefused
	}
	return nil, 0, status
}

type closeWriter interface{ CloseWrite() error }

// Splice copies a → b and b → a until both directions end, passing on each
// end of stream as a half-close; an error in either direction aborts both.
// It closes neither connection.
func Splice(a, b net.Conn) {
	var wg sync.WaitGroup
	var once sync.Once
	abort := func() {
		once.Do(func() {
			// Unblocks the other direction.
			a.SetDeadline(time.Unix(1, 0))
			b.SetDeadline(time.Unix(1, 0))
		})
	}
	half := func(dst, src net.Conn) {
		defer wg.Done()
		_, err := io.CopyBuffer(struct{ io.Writer }{dst}, src, make([]byte, bufSize))
		if err != nil {
			abort()
			return
		}
		if cw, ok := dst.(closeWriter); ok {
			if cw.CloseWrite() == nil {
				return
			}
		}
		abort()
	}
	wg.Add(2)
	go half(b, a)
	go half(a, b)
	wg.Wait()
}

// Package debugconsole exposes a sandbox's guest debug console on the host:
// a unix socket, root's only, each connection to which is carried to the
// guest's api.DebugConsoleVsockPort through the agent's channel. The bytes
// are passed through untouched (agent/api/console.md); `kasa exec` is the
// client.
package debugconsole

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/kasa-runtime/kasa/agent/api"
)

const (
	// MaxSessions bounds the connections carried at once; the guest has
	// the same bound.
	MaxSessions = 4
	// dialTimeout bounds reaching the guest's console port.
	dialTimeout = 10 * time.Second
	// bufSize is each direction's copy buffer.
	bufSize = 32 << 10
)

// Bridge listens on the host socket.
type Bridge struct {
	path string
	l    net.Listener
	dial func(ctx context.Context) (net.Conn, error)
	log  *logrus.Entry
	sem  chan struct{}

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// Listen creates the socket at path (mode 0600; an old socket there is
// replaced) and carries each connection to a stream that dial opens.
func Listen(path string, dial func(ctx context.Context) (net.Conn, error), log *logrus.Entry) (*Bridge, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("debug console socket: %w", err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("debug console socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("debug console socket: %w", err)
	}
	b := &Bridge{path: path, l: l, dial: dial, log: log, sem: make(chan struct{}, MaxSessions), conns: map[net.Conn]struct{}{}}
	b.wg.Add(1)
	go b.serve()
	return b, nil
}

// Path is the socket's path.
func (b *Bridge) Path() string { return b.path }

// Close removes the socket and ends every session. A nil Bridge does
// nothing.
func (b *Bridge) Close() error {
	if b == nil {
		return nil
	}
	err := b.l.Close()
	b.mu.Lock()
	for c := range b.conns {
		c.Close()
	}
	b.conns = nil
	b.mu.Unlock()
	b.wg.Wait()
	if rerr := os.Remove(b.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		return rerr
	}
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

func (b *Bridge) serve() {
	defer b.wg.Done()
	for {
		c, err := b.l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			b.log.WithError(err).Warn("debug console: accept")
			time.Sleep(100 * time.Millisecond)
			continue
		}
		select {
		case b.sem <- struct{}{}:
		default:
			b.log.Warnf("debug console: %d sessions already open, refusing another", MaxSessions)
			c.Close()
			continue
		}
		if !b.track(c) {
			c.Close()
			<-b.sem
			return
		}
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			defer func() { <-b.sem }()
			defer b.untrack(c)
			b.session(c)
		}()
	}
}

// track records c so that Close ends it; false once Close began.
func (b *Bridge) track(c net.Conn) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conns == nil {
		return false
	}
	b.conns[c] = struct{}{}
	return true
}

func (b *Bridge) untrack(c net.Conn) {
	b.mu.Lock()
	delete(b.conns, c)
	b.mu.Unlock()
}

// session carries one client connection to the guest, both ways, with
// half-close; it ends when both directions have.
func (b *Bridge) session(client net.Conn) {
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	guest, err := b.dial(ctx)
	cancel()
	if err != nil {
		b.log.WithError(err).Warn("debug console: guest not reachable")
		// The client shows what it reads: say why there is no shell (a
		// guest image older than the runtime has no console port).
		client.SetWriteDeadline(time.Now().Add(time.Second))
		fmt.Fprintf(client, "kasa: the guest's debug console (vsock port %d) is not reachable: %v\r\n", api.DebugConsoleVsockPort, err)
		return
	}
	defer guest.Close()
	if !b.track(guest) {
		return
	}
	defer b.untrack(guest)
	b.log.Info("debug console session opened")
	done := make(chan struct{}, 2)
	go func() { pipe(guest, client); done <- struct{}{} }()
	go func() { pipe(client, guest); done <- struct{}{} }()
	<-done
	<-done
	b.log.Info("debug console session closed")
}

// pipe copies src to dst, then half-closes dst (or closes both when dst
// cannot half-close), so the other side sees the end of the stream.
func pipe(dst, src net.Conn) {
	io.CopyBuffer(dst, src, make([]byte, bufSize))
	if cw, ok := dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
		return
	}
	dst.Close()
	src.Close()
}

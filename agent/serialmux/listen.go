package serialmux

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// hangupPoll is how long the agent waits before reading again while no host
// is connected: a virtio-serial port then reads as end-of-file at once, and
// poll(2) reports POLLHUP, so there is nothing better to wait on.
const hangupPoll = 10 * time.Millisecond

// Listener is the agent's end: it accepts one session at a time from the
// port, replacing the current one whenever a host says HELLO with a new id.
type Listener struct {
	port   io.ReadWriter
	fw     *frameWriter
	name   string
	accept chan net.Conn

	mu      sync.Mutex
	cur     *conn
	closed  chan struct{}
	closeMu sync.Once
	err     error
}

// Listen serves sessions on port (the guest's virtio-serial device). A read
// that returns no data (the host end is not connected) counts as a hang-up:
// the current session ends and the listener waits for the next HELLO.
func Listen(port io.ReadWriter, name string) *Listener {
	l := &Listener{
		port:   port,
		fw:     &frameWriter{w: port},
		name:   name,
		accept: make(chan net.Conn),
		closed: make(chan struct{}),
	}
	go l.readLoop()
	return l
}

// Accept returns the next session opened by the host.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.accept:
		return c, nil
	case <-l.closed:
		return nil, l.err
	}
}

// Close stops accepting and ends the current session. It does not close the port.
func (l *Listener) Close() error {
	l.shutdown(net.ErrClosed)
	return nil
}

func (l *Listener) Addr() net.Addr { return Addr{l.name} }

func (l *Listener) shutdown(err error) {
	l.closeMu.Do(func() {
		l.err = err
		close(l.closed)
		l.endSession(net.ErrClosed)
	})
}

func (l *Listener) endSession(reason error) {
	l.mu.Lock()
	c := l.cur
	l.cur = nil
	l.mu.Unlock()
	if c != nil {
		c.finish(reason)
	}
}

func (l *Listener) current() *conn {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cur
}

func (l *Listener) readLoop() {
	fr := newFrameReader(&hangupReader{r: l.port, onHangup: func() { l.endSession(io.EOF) }, closed: l.closed})
	for {
		f, err := fr.next()
		if err != nil {
			l.shutdown(fmt.Errorf("serialmux: reading %s: %w", l.name, err))
			return
		}
		cur := l.current()
		switch f.typ {
		case frameHello:
			if cur != nil && cur.session == f.session {
				// The host repeated its HELLO before our ACK reached it.
				_ = l.fw.write(frame{typ: frameHelloAck, session: f.session})
				continue
			}
			l.startSession(f.session)
		case frameData:
			if cur != nil && cur.session == f.session {
				cur.deliver(f.payload)
			}
		case frameClose:
			if cur != nil && cur.session == f.session {
				l.endSession(io.EOF)
			}
		}
	}
}

func (l *Listener) startSession(session uint32) {
	l.endSession(io.EOF)
	var c *conn
	c = newConn(l.fw, session, Addr{l.name}, Addr{"host"}, func() {
		l.mu.Lock()
		if l.cur == c {
			l.cur = nil
		}
		l.mu.Unlock()
	})
	l.mu.Lock()
	l.cur = c
	l.mu.Unlock()
	if err := l.fw.write(frame{typ: frameHelloAck, session: session}); err != nil {
		c.finish(err)
		return
	}
	select {
	case l.accept <- c:
	case <-l.closed:
	}
}

// hangupReader turns the port's "no host connected" end-of-file into a pause
// and a callback, so the frame reader sees one endless stream.
type hangupReader struct {
	r        io.Reader
	onHangup func()
	closed   <-chan struct{}
	hungUp   bool
}

func (h *hangupReader) Read(p []byte) (int, error) {
	for {
		n, err := h.r.Read(p)
		if n > 0 {
			h.hungUp = false
			return n, nil
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		if !h.hungUp {
			h.hungUp = true
			h.onHangup()
		}
		select {
		case <-h.closed:
			return 0, net.ErrClosed
		case <-time.After(hangupPoll):
		}
	}
}

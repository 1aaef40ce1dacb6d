package serialmux

import (
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// frameWriter serialises whole frames onto the shared stream.
type frameWriter struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
}

func (fw *frameWriter) write(f frame) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	fw.buf = appendFrame(fw.buf[:0], f)
	_, err := fw.w.Write(fw.buf)
	return err
}

func (fw *frameWriter) writeRaw(p []byte) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	_, err := fw.w.Write(p)
	return err
}

// Addr names one end of a session.
type Addr struct{ Name string }

func (Addr) Network() string  { return "serialmux" }
func (a Addr) String() string { return a.Name }

// conn is one session: a net.Conn whose bytes travel as DATA frames.
type conn struct {
	fw      *frameWriter
	session uint32
	local   Addr
	remote  Addr
	onClose func() // runs once when the conn is closed locally

	in  chan []byte // DATA payloads, handed over in order
	buf []byte      // rest of the payload being read

	once   sync.Once
	done   chan struct{}
	mu     sync.Mutex
	doneBy error // io.EOF for a peer CLOSE, net.ErrClosed for a local Close

	deadlineMu sync.Mutex
	deadline   time.Time
}

func newConn(fw *frameWriter, session uint32, local, remote Addr, onClose func()) *conn {
	return &conn{
		fw: fw, session: session, local: local, remote: remote, onClose: onClose,
		in:   make(chan []byte, 8),
		done: make(chan struct{}),
	}
}

// deliver hands a DATA payload to the reader; it blocks (backpressure) until
// the reader takes it or the conn ends.
func (c *conn) deliver(p []byte) {
	if len(p) == 0 {
		return
	}
	select {
	case c.in <- p:
	case <-c.done:
	}
}

// finish ends the conn with the given reason; the first reason wins.
func (c *conn) finish(reason error) bool {
	first := false
	c.once.Do(func() {
		c.mu.Lock()
		c.doneBy = reason
		c.mu.Unlock()
		close(c.done)
		first = true
	})
	return first
}

func (c *conn) reason() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.doneBy
}

func (c *conn) Read(p []byte) (int, error) {
	if len(c.buf) == 0 {
		// Payloads already delivered are read before the end is reported.
		select {
		case c.buf = <-c.in:
		default:
			var timeout <-chan time.Time
			c.deadlineMu.Lock()
			dl := c.deadline
			c.deadlineMu.Unlock()
			if !dl.IsZero() {
				d := time.Until(dl)
				if d <= 0 {
					return 0, os.ErrDeadlineExceeded
				}
				t := time.NewTimer(d)
				defer t.Stop()
				timeout = t.C
			}
			select {
			case c.buf = <-c.in:
			case <-c.done:
				select {
				case c.buf = <-c.in:
				default:
					return 0, c.reason()
				}
			case <-timeout:
				return 0, os.ErrDeadlineExceeded
			}
		}
	}
	n := copy(p, c.buf)
	c.buf = c.buf[n:]
	return n, nil
}

func (c *conn) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		select {
		case <-c.done:
			return written, net.ErrClosed
		default:
		}
		chunk := p
		if len(chunk) > MaxPayload {
			chunk = chunk[:MaxPayload]
		}
		if err := c.fw.write(frame{typ: frameData, session: c.session, payload: chunk}); err != nil {
			return written, err
		}
		written += len(chunk)
		p = p[len(chunk):]
	}
	return written, nil
}

// Close tells the peer the session is over and releases it.
func (c *conn) Close() error {
	if c.finish(net.ErrClosed) {
		_ = c.fw.write(frame{typ: frameClose, session: c.session})
		if c.onClose != nil {
			c.onClose()
		}
	}
	return nil
}

func (c *conn) LocalAddr() net.Addr  { return c.local }
func (c *conn) RemoteAddr() net.Addr { return c.remote }

func (c *conn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

func (c *conn) SetReadDeadline(t time.Time) error {
	c.deadlineMu.Lock()
	c.deadline = t
	c.deadlineMu.Unlock()
	return nil
}

// SetWriteDeadline is accepted but not enforced: a frame write goes to a
// local socket or virtio queue and completes or fails on its own.
func (c *conn) SetWriteDeadline(time.Time) error { return nil }

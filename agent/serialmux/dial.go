package serialmux

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// helloInterval is how often the host repeats HELLO until the agent answers:
// the agent may still be booting, or reading the tail of an older session.
const helloInterval = 200 * time.Millisecond

// Dial opens a new session on the host end of a virtio-serial port, the unix
// socket QEMU serves for the port's chardev. It returns once the agent has
// acknowledged the session, or fails when ctx ends first.
func Dial(ctx context.Context, socketPath string) (net.Conn, error) {
	var d net.Dialer
	uc, err := d.DialContext(ctx, "unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("serialmux: dial %s: %w", socketPath, err)
	}
	session := newSessionID()
	fw := &frameWriter{w: uc}
	c := newConn(fw, session, Addr{"host"}, Addr{socketPath}, func() { uc.Close() })

	acked := make(chan struct{})
	readErr := make(chan error, 1)
	go hostReadLoop(uc, c, acked, readErr)
	// A guest that never opens its port stops QEMU from draining the socket,
	// and our writes then block: closing the socket is what ends them.
	stopWatch := make(chan struct{})
	defer close(stopWatch)
	go func() {
		select {
		case <-ctx.Done():
			select {
			case <-acked:
			default:
				uc.Close()
			}
		case <-stopWatch:
		}
	}()

	hello := frame{typ: frameHello, session: session}
	tick := time.NewTicker(helloInterval)
	defer tick.Stop()
	for {
		if err := fw.writeRaw(resyncPadding); err == nil {
			err = fw.write(hello)
		}
		if err != nil {
			uc.Close()
			if ctx.Err() != nil {
				return nil, fmt.Errorf("serialmux: agent on %s did not answer the session handshake: %w", socketPath, ctx.Err())
			}
			return nil, fmt.Errorf("serialmux: send hello on %s: %w", socketPath, err)
		}
		select {
		case <-acked:
			return c, nil
		case err := <-readErr:
			uc.Close()
			return nil, fmt.Errorf("serialmux: %s closed before the agent answered: %w", socketPath, err)
		case <-ctx.Done():
			uc.Close()
			return nil, fmt.Errorf("serialmux: agent on %s did not answer the session handshake: %w", socketPath, ctx.Err())
		case <-tick.C:
		}
	}
}

// hostReadLoop reads the agent's frames: it waits for the HELLO_ACK of this
// session, then delivers its DATA until CLOSE or the socket ends. Frames of
// any other session are leftovers of an earlier host and are dropped.
func hostReadLoop(uc net.Conn, c *conn, acked chan<- struct{}, readErr chan<- error) {
	fr := newFrameReader(uc)
	isAcked := false
	for {
		f, err := fr.next()
		if err != nil {
			if !isAcked {
				readErr <- err
			}
			c.finish(eofOr(err))
			uc.Close()
			return
		}
		if f.session != c.session {
			continue
		}
		switch f.typ {
		case frameHelloAck:
			if !isAcked {
				isAcked = true
				close(acked)
			}
		case frameData:
			if isAcked {
				c.deliver(f.payload)
			}
		case frameClose:
			if !isAcked {
				readErr <- errCloseBeforeAck
			}
			c.finish(io.EOF)
			uc.Close()
			return
		}
	}
}

// errCloseBeforeAck is what Dial reports when the agent ends the session it
// has not acknowledged: only a misbehaving guest does that.
var errCloseBeforeAck = errors.New("serialmux: agent closed the session before acknowledging it")

func newSessionID() uint32 {
	var b [4]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			panic(err) // crypto/rand never fails on Linux
		}
		if id := binary.BigEndian.Uint32(b[:]); id != 0 {
			return id
		}
	}
}

// eofOr maps the end of the underlying stream to io.EOF for the conn's reader.
func eofOr(err error) error {
	if errors.Is(err, net.ErrClosed) {
		return net.ErrClosed
	}
	return io.EOF
}

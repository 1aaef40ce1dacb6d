package vsock

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

var (
	// handshakeTimeout bounds reading a client's CONNECT line.
	handshakeTimeout = 5 * time.Second
	// connectTimeout bounds the guest's answer to a REQUEST. A guest under
	// TCG with a hundred streams opening at once can be slow.
	connectTimeout = 20 * time.Second
)

// serveHybrid accepts host clients on the hybrid-vsock socket.
func (b *Backend) serveHybrid() {
	defer b.wg.Done()
	defer b.recoverPanic()
	for {
		uc, err := b.hybridLn.AcceptUnix()
		if err != nil {
			select {
			case <-b.quit:
			default:
				b.shutdown(fmt.Errorf("vsock backend: accepting hybrid vsock connections: %w", err))
			}
			return
		}
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			uc.Close()
			return
		}
		if len(b.handshakes) >= b.cfg.MaxConnections {
			b.stats.ConnectionsRefused++
			b.mu.Unlock()
			uc.SetWriteDeadline(time.Now().Add(time.Second))
			fmt.Fprintf(uc, "ERR too many connections being set up\n")
			uc.Close()
			continue
		}
		b.handshakes[uc] = struct{}{}
		b.wg.Add(1)
		b.mu.Unlock()
		go b.hostConnect(uc)
	}
}

// hostConnect runs one client's handshake: CONNECT <port>, a REQUEST to the
// guest, then OK <host port> or ERR <reason>.
func (b *Backend) hostConnect(uc *net.UnixConn) {
	defer b.wg.Done()
	defer b.recoverPanic()
	handedOff := false
	defer func() {
		b.mu.Lock()
		delete(b.handshakes, uc)
		b.mu.Unlock()
		if !handedOff {
			uc.Close()
		}
	}()
	fail := func(format string, args ...any) {
		uc.SetWriteDeadline(time.Now().Add(time.Second))
		fmt.Fprintf(uc, "ERR "+format+"\n", args...)
	}

	uc.SetDeadline(time.Now().Add(handshakeTimeout))
	line, err := readLine(uc, 64)
	if err != nil {
		return
	}
	port, ok := parseConnect(line)
	if !ok {
		fail("want CONNECT <port>")
		return
	}

	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	if !b.running() {
		b.mu.Unlock()
		fail("guest vsock driver is not ready")
		return
	}
	if n := len(b.conns); n >= b.cfg.MaxConnections {
		b.stats.ConnectionsRefused++
		b.mu.Unlock()
		fail("too many streams (%d) open to the guest", n)
		return
	}
	c := b.newConn(b.allocPort(port), port, true)
	c.uc = uc
	c.ready = make(chan struct{})
	b.send(c, opRequest, 0)
	b.mu.Unlock()

	timer := time.NewTimer(connectTimeout)
	defer timer.Stop()
	select {
	case <-c.ready:
	case <-timer.C:
	}

	b.mu.Lock()
	switch c.state {
	case connConnecting:
		b.resetConn(c, true) // tell the guest to forget it
		b.mu.Unlock()
		fail("guest port %d did not answer within %v", port, connectTimeout)
		return
	case connClosed:
		b.mu.Unlock()
		fail("guest port %d refused the connection", port)
		return
	}
	b.mu.Unlock()

	uc.SetDeadline(time.Now().Add(handshakeTimeout))
	_, err = fmt.Fprintf(uc, "OK %d\n", c.key.local)
	uc.SetDeadline(time.Time{})
	b.mu.Lock()
	defer b.mu.Unlock()
	handedOff = true // from here the stream owns uc
	if err != nil {
		b.resetConn(c, true)
		uc.Close()
		return
	}
	if c.state != connEstablished { // reset while we wrote OK
		uc.Close()
		return
	}
	b.startStream(c)
}

// allocPort picks a host port for a stream to guest port peer.
func (b *Backend) allocPort(peer uint32) uint32 {
	for {
		p := b.nextPort
		b.nextPort++
		if b.nextPort < firstHostPort {
			b.nextPort = firstHostPort
		}
		if _, used := b.conns[connKey{p, peer}]; !used {
			return p
		}
	}
}

func parseConnect(line string) (uint32, bool) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(line), "CONNECT ")
	if !ok {
		return 0, false
	}
	p, err := strconv.ParseUint(strings.TrimSpace(rest), 10, 32)
	return uint32(p), err == nil
}

// readLine reads up to and including '\n' one byte at a time: what follows
// belongs to the stream.
func readLine(c *net.UnixConn, max int) (string, error) {
	var b []byte
	var one [1]byte
	for len(b) < max {
		n, err := c.Read(one[:])
		if n == 1 {
			if one[0] == '\n' {
				return string(b), nil
			}
			b = append(b, one[0])
		}
		if err != nil {
			return "", err
		}
	}
	return "", errors.New("line too long")
}

func writeFD(fd int, b []byte) { unix.Write(fd, b) }

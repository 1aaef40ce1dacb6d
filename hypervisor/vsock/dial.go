package vsock

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	mdvsock "github.com/mdlayher/vsock"
)

// The host's side of a guest's vsock ports, for a driver's DialGuest: one
// attempt each, bounded by the context. Callers that wait for a guest still
// booting retry (agent/client.Connect does).

// DialHybrid opens a stream to guest port port through the hybrid vsock
// socket at path (this package's Backend, Cloud Hypervisor's or
// Firecracker's): "CONNECT <port>\n" answered by "OK <host port>\n".
// Whatever follows the answer belongs to the stream.
func DialHybrid(ctx context.Context, path string, port uint32) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	// A cancelled ctx ends the handshake too, not only its deadline.
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := fmt.Fprintf(c, "CONNECT %d\n", port); err != nil {
		c.Close()
		return nil, err
	}
	// Read byte by byte: whatever follows the line belongs to the stream.
	// The answer is short ("OK 4294967295\n"); a longer one is refused
	// rather than buffered.
	var b [1]byte
	var buf []byte
	for len(buf) == 0 || buf[len(buf)-1] != '\n' {
		if len(buf) >= maxAnswerLine {
			c.Close()
			return nil, fmt.Errorf("hybrid vsock handshake on %s: answer longer than %d bytes: %q", path, maxAnswerLine, buf)
		}
		if _, err := c.Read(b[:]); err != nil {
			c.Close()
			return nil, fmt.Errorf("hybrid vsock handshake on %s: %w", path, err)
		}
		buf = append(buf, b[0])
	}
	line := string(buf)
	if !strings.HasPrefix(line, "OK ") {
		c.Close()
		return nil, fmt.Errorf("hybrid vsock handshake on %s: got %q", path, strings.TrimSpace(line))
	}
	if !stop() {
		c.Close()
		return nil, fmt.Errorf("hybrid vsock handshake on %s: %w", path, ctx.Err())
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// maxAnswerLine bounds the hybrid vsock handshake's answer line.
const maxAnswerLine = 64

// Dial opens an AF_VSOCK stream to port of the guest at cid through the
// kernel's vsock (a VM on /dev/vhost-vsock). The kernel's connect takes no
// context: when ctx ends first, Dial returns and a late connection is closed.
func Dial(ctx context.Context, cid, port uint32) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := mdvsock.Dial(cid, port, nil)
		done <- result{c, err}
	}()
	select {
	case r := <-done:
		return r.c, r.err
	case <-ctx.Done():
		go func() {
			if r := <-done; r.c != nil {
				r.c.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

package client

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/mdlayher/vsock"

	"github.com/kasa-runtime/kasa/agent/serialmux"
)

// retryInterval paces connection attempts while the guest is still booting.
const retryInterval = 20 * time.Millisecond

// dial opens a byte stream to the agent at addr:
//
//	serial:///run/kasa/vm/ID/agent.sock   virtio-serial port (framed by serialmux)
//	hvsock:///run/kasa/vm/ID/vsock.sock:1024  hybrid vsock unix socket
//	vsock://CID:1024                        kernel AF_VSOCK
//
// It retries until ctx ends, so it can be called as soon as the VM starts.
func dial(ctx context.Context, addr string) (net.Conn, error) {
	scheme, rest, ok := strings.Cut(addr, "://")
	if !ok {
		return nil, fmt.Errorf("agent address %q: want scheme://..., schemes serial, hvsock, vsock", addr)
	}
	switch scheme {
	case "serial":
		return serialmux.Dial(ctx, rest)
	case "hvsock":
		path, port, err := splitPort(rest)
		if err != nil {
			return nil, fmt.Errorf("agent address %q: %w", addr, err)
		}
		return retry(ctx, addr, func() (net.Conn, error) { return dialHybridVsock(ctx, path, port) })
	case "vsock":
		u, err := url.Parse(addr)
		if err != nil {
			return nil, fmt.Errorf("agent address %q: %w", addr, err)
		}
		cid, err1 := strconv.ParseUint(u.Hostname(), 10, 32)
		port, err2 := strconv.ParseUint(u.Port(), 10, 32)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("agent address %q: want vsock://CID:PORT", addr)
		}
		return retry(ctx, addr, func() (net.Conn, error) { return vsock.Dial(uint32(cid), uint32(port), nil) })
	default:
		return nil, fmt.Errorf("agent address %q: unknown scheme %q (want serial, hvsock or vsock)", addr, scheme)
	}
}

func splitPort(s string) (string, uint32, error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return "", 0, fmt.Errorf("want PATH:PORT")
	}
	p, err := strconv.ParseUint(s[i+1:], 10, 32)
	if err != nil {
		return "", 0, fmt.Errorf("bad port %q", s[i+1:])
	}
	return s[:i], uint32(p), nil
}

func retry(ctx context.Context, addr string, f func() (net.Conn, error)) (net.Conn, error) {
	for {
		c, err := f()
		if err == nil {
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("agent at %s not reachable: %w (last error: %v)", addr, ctx.Err(), err)
		case <-time.After(retryInterval):
		}
	}
}

// dialHybridVsock speaks Cloud Hypervisor's and Firecracker's hybrid vsock
// handshake: "CONNECT <port>\n" answered by "OK <host port>\n".
func dialHybridVsock(ctx context.Context, path string, port uint32) (net.Conn, error) {
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
		if len(buf) >= maxHandshakeLine {
			c.Close()
			return nil, fmt.Errorf("hybrid vsock handshake on %s: answer longer than %d bytes: %q", path, maxHandshakeLine, buf)
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

// maxHandshakeLine bounds the hybrid vsock handshake's answer line.
const maxHandshakeLine = 64

// DialVsockPort opens one stream to another AF_VSOCK port of the guest whose
// agent is at agentAddr (hvsock:// or vsock://), through the same channel:
// for a guest service beside the agent, such as port forwarding. It tries
// once; ctx bounds the handshake. A virtio-serial agent has no such ports.
func DialVsockPort(ctx context.Context, agentAddr string, port uint32) (net.Conn, error) {
	scheme, rest, ok := strings.Cut(agentAddr, "://")
	if !ok {
		return nil, fmt.Errorf("agent address %q: want scheme://...", agentAddr)
	}
	switch scheme {
	case "hvsock":
		path, _, err := splitPort(rest)
		if err != nil {
			return nil, fmt.Errorf("agent address %q: %w", agentAddr, err)
		}
		return dialHybridVsock(ctx, path, port)
	case "vsock":
		u, err := url.Parse(agentAddr)
		if err != nil {
			return nil, fmt.Errorf("agent address %q: %w", agentAddr, err)
		}
		cid, err := strconv.ParseUint(u.Hostname(), 10, 32)
		if err != nil {
			return nil, fmt.Errorf("agent address %q: want vsock://CID:PORT", agentAddr)
		}
		type result struct {
			c   net.Conn
			err error
		}
		done := make(chan result, 1)
		go func() {
			c, err := vsock.Dial(uint32(cid), port, nil)
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
	default:
		return nil, fmt.Errorf("agent address %q: %s has no vsock ports besides the agent's", agentAddr, scheme)
	}
}

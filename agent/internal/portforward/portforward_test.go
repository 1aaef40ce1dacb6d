package portforward

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/kasa-runtime/kasa/agent/api"
)

// serve runs a Server on a unix listener standing in for vsock.
func serve(t *testing.T, s *Server) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "pf.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { s.Serve(context.Background(), l); close(done) }()
	t.Cleanup(func() { l.Close(); <-done })
	return sock
}

func request(t *testing.T, sock string, raw []byte) (*net.UnixConn, api.PortForwardReply) {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(raw); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, api.PortForwardReplySize)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	r, err := api.DecodePortForwardReply(buf)
	if err != nil {
		t.Fatal(err)
	}
	return c.(*net.UnixConn), r
}

func TestServeForwardsAndRefuses(t *testing.T) {
	l, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skip("no IPv6 loopback:", err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	sock := serve(t, New())

	// Asked for IPv4, the server falls back to ::1 as "localhost" does.
	c, r := request(t, sock, api.PortForwardRequest{Family: api.PortForwardIPv4, Port: port}.Encode())
	if r.Status != api.PortForwardOK || r.Family != api.PortForwardIPv6 {
		t.Fatalf("reply %+v, want ok over IPv6", r)
	}
	c.Write([]byte("hello"))
	c.CloseWrite()
	if b, err := io.ReadAll(c); err != nil || string(b) != "hello" {
		t.Fatalf("echo %q, %v", b, err)
	}
	c.Close()

	l.Close()
	_, r = request(t, sock, api.PortForwardRequest{Family: api.PortForwardIPv4, Port: port}.Encode())
	if r.Status != api.PortForwardRefused {
		t.Fatalf("closed port: %+v, want refused", r)
	}
	bad := api.PortForwardRequest{Family: api.PortForwardIPv4, Port: port}.Encode()
	bad[2] = 9
	if _, r = request(t, sock, bad); r.Status != api.PortForwardBadRequest {
		t.Fatalf("version 9: %+v, want bad request", r)
	}
}

func TestServeBusy(t *testing.T) {
	s := New()
	s.max = 1
	block := make(chan struct{})
	defer close(block) // before serve's cleanup waits for the first stream
	entered := make(chan struct{}, 1)
	s.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		entered <- struct{}{}
		<-block
		return nil, &net.OpError{Op: "dial", Err: io.EOF}
	}
	sock := serve(t, s)
	first, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	first.Write(api.PortForwardRequest{Family: api.PortForwardIPv4, Port: 1}.Encode())
	<-entered // the first stream holds the only place
	// Answered before any request: the server does not read one.
	second, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	second.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, api.PortForwardReplySize)
	if _, err := io.ReadFull(second, buf); err != nil {
		t.Fatal(err)
	}
	if r, err := api.DecodePortForwardReply(buf); err != nil || r.Status != api.PortForwardBusy {
		t.Errorf("beyond the cap: %+v, %v; want busy", r, err)
	}
}

func TestRequestRoundTrip(t *testing.T) {
	for _, p := range []uint16{1, 80, 65535} {
		req := api.PortForwardRequest{Family: api.PortForwardIPv6, Port: p}
		got, err := api.DecodePortForwardRequest(req.Encode())
		if err != nil || got != req {
			t.Errorf("%+v: decoded %+v, %v", req, got, err)
		}
	}
	for _, raw := range [][]byte{nil, []byte("KP\x01\x04\x00\x00\x00\x00"), []byte("XP\x01\x04\x00\x50\x00\x00"), []byte("KP\x01\x05\x00\x50\x00\x00"), []byte("KP\x01\x04\x00\x50\x00\x01")} {
		if _, err := api.DecodePortForwardRequest(raw); err == nil {
			t.Errorf("%q accepted", raw)
		}
	}
}

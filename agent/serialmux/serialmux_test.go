package serialmux

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// fakePort behaves like QEMU's virtio-serial port backed by a unix-socket
// chardev: the host end accepts one client at a time; while none is
// connected the guest reads end-of-file and guest writes are dropped.
type fakePort struct {
	ln net.Listener

	mu   sync.Mutex
	cond *sync.Cond
	host net.Conn
	in   bytes.Buffer // host → guest bytes not yet read
}

func newFakePort(t *testing.T) (*fakePort, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	p := &fakePort{ln: ln}
	p.cond = sync.NewCond(&p.mu)
	go p.serve()
	t.Cleanup(func() { ln.Close() })
	return p, path
}

func (p *fakePort) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.host = c
		p.mu.Unlock()
		buf := make([]byte, 32*1024)
		for {
			n, err := c.Read(buf)
			p.mu.Lock()
			p.in.Write(buf[:n])
			p.cond.Broadcast()
			p.mu.Unlock()
			if err != nil {
				break
			}
		}
		p.mu.Lock()
		p.host = nil
		p.cond.Broadcast()
		p.mu.Unlock()
		c.Close()
	}
}

func (p *fakePort) Read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.in.Len() == 0 {
		if p.host == nil {
			return 0, io.EOF
		}
		p.cond.Wait() // a broadcast arrives with data or with the host's end
		if p.in.Len() == 0 {
			return 0, io.EOF
		}
	}
	return p.in.Read(b)
}

func (p *fakePort) Write(b []byte) (int, error) {
	p.mu.Lock()
	h := p.host
	p.mu.Unlock()
	if h == nil {
		return len(b), nil
	}
	h.Write(b)
	return len(b), nil
}

// echo serves every accepted session by echoing it back.
func echo(l *Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			io.Copy(c, c)
			c.Close()
		}()
	}
}

func roundTrip(t *testing.T, c net.Conn, size int) {
	t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	go c.Write(data)
	got := make([]byte, size)
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read back: %v", err)
	}
	if sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatal("echoed bytes differ")
	}
}

func dial(t *testing.T, path string) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestSessionRoundTrip(t *testing.T) {
	port, path := newFakePort(t)
	l := Listen(port, "agent.0")
	defer l.Close()
	go echo(l)

	c := dial(t, path)
	roundTrip(t, c, 1<<20)
	c.Close()
}

// A host that dies half-way through a frame must not corrupt the next host's
// session, nor may the old session's bytes reach it.
func TestReconnectAfterTornFrame(t *testing.T) {
	port, path := newFakePort(t)
	l := Listen(port, "agent.0")
	defer l.Close()
	go echo(l)

	first := dial(t, path)
	roundTrip(t, first, 4096)
	// Tear a frame: a DATA header promising MaxPayload bytes, then only a few.
	torn := appendFrame(nil, frame{typ: frameData, session: first.(*conn).session, payload: make([]byte, MaxPayload)})
	raw, err := net.Dial("unix", path) // queued behind the first host, like QEMU's backlog
	if err != nil {
		t.Fatal(err)
	}
	first.(*conn).fw.writeRaw(torn[:100])
	first.(*conn).onClose() // the shim dies: its socket closes, no CLOSE frame
	raw.Close()

	second := dial(t, path)
	roundTrip(t, second, 256*1024)
	if second.(*conn).session == first.(*conn).session {
		t.Fatal("session ids repeat")
	}
	second.Close()
}

func TestFrameReaderResynchronises(t *testing.T) {
	var stream []byte
	junk := make([]byte, 333)
	rand.Read(junk)
	stream = append(stream, junk...)
	stream = appendFrame(stream, frame{typ: frameData, session: 7, payload: []byte("one")})
	bad := appendFrame(nil, frame{typ: frameData, session: 7, payload: []byte("corrupt")})
	bad[len(bad)-1] ^= 0xff // wrong checksum
	stream = append(stream, bad...)
	huge := appendFrame(nil, frame{typ: frameData, session: 7})
	binary.BigEndian.PutUint32(huge[9:13], MaxPayload+1) // impossible length
	stream = append(stream, huge...)
	stream = append(stream, magic[:]...) // a lone magic
	stream = appendFrame(stream, frame{typ: frameData, session: 7, payload: []byte("two")})

	fr := newFrameReader(bytes.NewReader(stream))
	var got []string
	for {
		f, err := fr.next()
		if err != nil {
			break
		}
		got = append(got, string(f.payload))
	}
	if len(got) != 2 || got[0] != "one" || got[1] != "two" {
		t.Fatalf("frames = %q, want [one two]", got)
	}
	if fr.skipped == 0 {
		t.Fatal("no bytes reported skipped")
	}
}

func TestDialTimesOutWithoutAgent(t *testing.T) {
	_, path := newFakePort(t) // nobody listens on the guest side
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := Dial(ctx, path); err == nil {
		t.Fatal("dial without an agent succeeded")
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("dial ignored its deadline")
	}
}

func TestPeerCloseIsEOF(t *testing.T) {
	port, path := newFakePort(t)
	l := Listen(port, "agent.0")
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		c.Write([]byte("bye"))
		c.Close()
	}()
	c := dial(t, path)
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if string(got) != "bye" {
		t.Fatalf("got %q", got)
	}
}

// A guest that never opens its port leaves QEMU's socket undrained; the
// host's writes then block, and Dial must still return at its deadline.
func TestDialReturnsWhenPortIsNotDrained(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			time.Sleep(30 * time.Second) // accept, never read
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	if _, err := Dial(ctx, path); err == nil {
		t.Fatal("dial to an undrained port succeeded")
	}
	if d := time.Since(start); d > 6*time.Second {
		t.Fatalf("dial took %s with a 3 s deadline", d)
	}
}

// TestFrameReaderSessionAcrossReads: a frame that arrives in pieces keeps
// its session id. The reader took it from its first Peek's slice, which the
// Peek for the whole frame moves when the header came with the end of the
// previous read and the rest of the frame did not.
func TestFrameReaderSessionAcrossReads(t *testing.T) {
	var stream []byte
	for i := range 8 {
		stream = appendFrame(stream, frame{typ: frameData, session: uint32(0x1000 + i), payload: bytes.Repeat([]byte{byte(i)}, 10*(i+1))})
	}
	fr := newFrameReader(&chunkReader{data: stream, chunk: 50})
	for i := range 8 {
		f, err := fr.next()
		if err != nil {
			t.Fatal(err)
		}
		if f.session != uint32(0x1000+i) || len(f.payload) != 10*(i+1) {
			t.Fatalf("frame %d: session %#x, %d bytes; want %#x, %d", i, f.session, len(f.payload), 0x1000+i, 10*(i+1))
		}
	}
}

// chunkReader returns data at most chunk bytes at a time.
type chunkReader struct {
	data  []byte
	chunk int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), c.chunk)], c.data)
	c.data = c.data[n:]
	return n, nil
}

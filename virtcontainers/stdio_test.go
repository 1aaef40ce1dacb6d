package virtcontainers

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/kasa-runtime/kasa/agent/client"
)

// stdinAgent answers WriteStdin with what reply says; the rest of the
// agent interface is left unimplemented.
type stdinAgent struct {
	agent
	reply func(sent int) int
	calls int
	got   bytes.Buffer
}

func (a *stdinAgent) WriteStdin(_ context.Context, _, _ string, data []byte) (int, error) {
	a.calls++
	n := a.reply(len(data))
	if n > 0 && n <= len(data) {
		a.got.Write(data[:n])
	}
	return n, nil
}

// The stdin copy is bounded whatever the guest answers: Len 0 forever ends
// it after a few tries instead of spinning, Len > sent ends it at once.
func TestStdinWriterDistrustsAgent(t *testing.T) {
	for _, tc := range []struct {
		name      string
		reply     func(int) int
		wantErr   error
		maxCalls  int
		wantBytes int
	}{
		{"always zero", func(int) int { return 0 }, io.ErrNoProgress, maxStdinStalls, 0},
		{"more than sent", func(n int) int { return n + 1 }, client.ErrBadReply, 1, 0},
		{"negative", func(int) int { return -1 }, client.ErrBadReply, 1, 0},
		{"one byte at a time", func(int) int { return 1 }, nil, 1000, 10},
		{"whole", func(n int) int { return n }, nil, 1, 10},
	} {
		a := &stdinAgent{reply: tc.reply}
		w := &stdinWriter{ctx: context.Background(), s: &Sandbox{agent: a}, id: "c", execID: "e"}
		done := make(chan struct{})
		var n int
		var err error
		go func() { n, err = w.Write([]byte("0123456789")); close(done) }()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			t.Fatalf("%s: Write did not return within 60 s (%d agent calls)", tc.name, a.calls)
		}
		if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.wantErr)
		}
		if n != tc.wantBytes || a.got.Len() != tc.wantBytes || a.calls > tc.maxCalls {
			t.Errorf("%s: wrote %d (agent got %d) in %d calls; want %d in at most %d", tc.name, n, a.got.Len(), a.calls, tc.wantBytes, tc.maxCalls)
		}
	}
	// A large write goes in bounded chunks.
	a := &stdinAgent{reply: func(n int) int {
		if n > stdinChunk {
			t.Errorf("one WriteStdin carried %d bytes, more than %d", n, stdinChunk)
		}
		return n
	}}
	w := &stdinWriter{ctx: context.Background(), s: &Sandbox{agent: a}, id: "c", execID: "e"}
	if n, err := w.Write(make([]byte, 3*stdinChunk+1)); err != nil || n != 3*stdinChunk+1 || a.calls != 4 {
		t.Errorf("large write: %d, %v in %d calls", n, err, a.calls)
	}
}

// Output longer than was asked for is an error, not data.
func TestStreamReaderRejectsOversizedChunk(t *testing.T) {
	r := &streamReader{ctx: context.Background(), read: func(context.Context) ([]byte, bool, error) {
		return make([]byte, readChunk+1), false, nil
	}}
	if _, err := r.Read(make([]byte, 10)); !errors.Is(err, client.ErrBadReply) {
		t.Fatalf("oversized chunk: %v, want ErrBadReply", err)
	}
}

// A reply with no data and no EOF, which the agent never sends (it waits
// for data), ends the read at once instead of spinning it.
func TestStreamReaderEndsOnEmptyReplies(t *testing.T) {
	calls := 0
	r := &streamReader{ctx: context.Background(), read: func(context.Context) ([]byte, bool, error) {
		calls++
		return nil, false, nil
	}}
	if _, err := r.Read(make([]byte, 10)); !errors.Is(err, client.ErrBadReply) || calls != 1 {
		t.Fatalf("empty reply: %v after %d calls, want ErrBadReply after 1", err, calls)
	}
}

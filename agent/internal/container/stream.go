package container

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"syscall"
)

const (
	// streamLimit bounds what the agent holds of one output stream that the
	// host has not read yet. A process that writes more blocks on its pipe
	// until the host catches up.
	streamLimit = 1 << 20
	// defaultReadLen and maxReadLen are ReadStreamRequest.max_len's default
	// and cap.
	defaultReadLen = 32 << 10
	maxReadLen     = 1 << 20
	// fillChunk is how much the copier reads from the pipe at a time.
	fillChunk = 32 << 10
)

// stream is one output stream of a process (stdout, stderr or its
// terminal): a copier drains the pipe into a bounded buffer, readers take
// chunks out of it. End of stream is reported only once the source ended
// and every byte has been read.
type stream struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	limit   int
	ended   bool // the source reached end of file (or failed)
	discard bool // nobody will read any more: drop what comes
	// changed is closed, and replaced, whenever data, space or the end
	// appears.
	changed chan struct{}
}

func newStream(limit int) *stream {
	return &stream{limit: limit, changed: make(chan struct{})}
}

// endedStream is a stream that has nothing and never will (the stderr of a
// process with a terminal).
func endedStream() *stream {
	s := newStream(0)
	s.ended = true
	return s
}

// broadcast wakes every waiter; s.mu must be held.
func (s *stream) broadcast() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// fill copies r into the stream until r ends. A terminal master reports
// EIO once the last holder of its slave closed it: that is end of stream,
// as is any other read error. fill does not close r.
func (s *stream) fill(r io.Reader) {
	chunk := make([]byte, fillChunk)
	for {
		s.mu.Lock()
		for s.buf.Len() >= s.limit && !s.discard {
			ch := s.changed
			s.mu.Unlock()
			<-ch
			s.mu.Lock()
		}
		room := s.limit - s.buf.Len()
		s.mu.Unlock()
		if room <= 0 || room > len(chunk) {
			room = len(chunk) // discarding, or plenty of room
		}
		n, err := r.Read(chunk[:room])
		s.mu.Lock()
		if n > 0 && !s.discard {
			s.buf.Write(chunk[:n])
			s.broadcast()
		}
		if err != nil && !errors.Is(err, syscall.EINTR) {
			s.ended = true
			s.broadcast()
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
	}
}

// read returns up to max bytes, waiting until there are some or the stream
// ended; eof is true only when the stream ended and was read to the end.
func (s *stream) read(ctx context.Context, max int) (data []byte, eof bool, err error) {
	if max <= 0 {
		max = defaultReadLen
	}
	if max > maxReadLen {
		max = maxReadLen
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if s.buf.Len() > 0 {
			n := min(max, s.buf.Len())
			data = make([]byte, n)
			copy(data, s.buf.Next(n))
			s.broadcast() // room for the copier
			return data, false, nil
		}
		if s.ended {
			s.buf = bytes.Buffer{} // free what it grew to
			return nil, true, nil
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
			s.mu.Lock()
		case <-ctx.Done():
			s.mu.Lock()
			return nil, false, ctx.Err()
		}
	}
}

// close drops what is buffered and what is still to come, and ends the
// stream for readers; the copier keeps draining the source so that the
// writer never blocks on it.
func (s *stream) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.discard = true
	s.ended = true
	s.buf.Reset()
	s.broadcast()
}

package container

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"testing"
	"time"
)

func TestStreamDeliversEverythingThenEOF(t *testing.T) {
	s := newStream(64)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	go s.fill(r)
	want := bytes.Repeat([]byte("0123456789"), 100) // far more than the limit
	go func() {
		w.Write(want)
		w.Close()
	}()
	ctx := context.Background()
	var got []byte
	for {
		data, eof, err := s.read(ctx, 7)
		if err != nil {
			t.Fatal(err)
		}
		if len(data) > 7 {
			t.Fatalf("read %d bytes, asked for at most 7", len(data))
		}
		if eof {
			if len(data) != 0 {
				t.Fatal("eof with data")
			}
			break
		}
		if len(data) == 0 {
			t.Fatal("a read returned neither data nor eof")
		}
		got = append(got, data...)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes, want %d", len(got), len(want))
	}
	// End of stream is sticky.
	if _, eof, _ := s.read(ctx, 0); !eof {
		t.Error("second read after the end: no eof")
	}
}

func TestStreamBackpressure(t *testing.T) {
	s := newStream(16)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	go s.fill(r)
	written := make(chan int, 1)
	go func() {
		// A pipe holds 64 KiB; with the stream full, the writer must block.
		n, _ := w.Write(make([]byte, 256<<10))
		written <- n
	}()
	select {
	case n := <-written:
		t.Fatalf("writer finished (%d bytes) though nobody read", n)
	case <-time.After(200 * time.Millisecond):
	}
	s.mu.Lock()
	held := s.buf.Len()
	s.mu.Unlock()
	if held > 16 {
		t.Fatalf("stream holds %d bytes, limit 16", held)
	}
	total := 0
	for total < 256<<10 {
		data, _, err := s.read(context.Background(), maxReadLen)
		if err != nil {
			t.Fatal(err)
		}
		total += len(data)
	}
	if n := <-written; n != 256<<10 {
		t.Fatalf("writer wrote %d", n)
	}
	w.Close()
}

func TestStreamReadWaitsAndHonoursContext(t *testing.T) {
	s := newStream(streamLimit)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, _, err := s.read(ctx, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read on an idle stream: %v, want the context's deadline", err)
	}
	done := make(chan []byte)
	go func() {
		data, _, _ := s.read(context.Background(), 0)
		done <- data
	}()
	time.Sleep(20 * time.Millisecond)
	go s.fill(io.LimitReader(bytes.NewReader([]byte("late")), 4))
	select {
	case data := <-done:
		if string(data) != "late" {
			t.Fatalf("got %q", data)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("a waiting reader was not woken by new data")
	}
}

func TestStreamCloseEndsReadersAndDrainsWriter(t *testing.T) {
	s := newStream(8)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	go s.fill(r)
	wrote := make(chan struct{})
	go func() {
		w.Write(make([]byte, 128<<10))
		w.Close()
		close(wrote)
	}()
	time.Sleep(20 * time.Millisecond)
	s.close()
	if _, eof, err := s.read(context.Background(), 0); err != nil || !eof {
		t.Fatalf("read after close: eof %v, %v", eof, err)
	}
	select {
	case <-wrote:
	case <-time.After(2 * time.Second):
		t.Fatal("writer still blocked after the stream was closed")
	}
}

func TestEndedStream(t *testing.T) {
	if data, eof, err := endedStream().read(context.Background(), 0); len(data) != 0 || !eof || err != nil {
		t.Fatalf("ended stream: %q %v %v", data, eof, err)
	}
}

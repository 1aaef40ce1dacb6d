package serialmux

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// fuzzHangTimeout bounds, in wall-clock time, a wait that only a real hang
// reaches: fuzzers share small machines that can stall a process for
// seconds (5 s was once mistaken for a hang), yet a hang must still show
// within a 20 s -fuzztime run.
const fuzzHangTimeout = 15 * time.Second

// fuzzSession is the session id the fuzzed host dials with; seeds use it so
// that the fuzzer starts from streams the host actually accepts.
const fuzzSession uint32 = 0x4b415341

// seedStreams are realistic guest → host streams: an acknowledged session
// with data, torn and corrupted frames, other sessions' leftovers.
func seedStreams() [][]byte {
	var seeds [][]byte
	ack := appendFrame(nil, frame{typ: frameHelloAck, session: fuzzSession})
	data := func(s uint32, p string) []byte {
		return appendFrame(nil, frame{typ: frameData, session: s, payload: []byte(p)})
	}
	closeF := appendFrame(nil, frame{typ: frameClose, session: fuzzSession})

	seeds = append(seeds, nil, []byte("KSM1"), ack)
	seeds = append(seeds, bytes.Join([][]byte{ack, data(fuzzSession, "hello"), data(fuzzSession, "world"), closeF}, nil))
	// Leftovers of an older session, then ours.
	seeds = append(seeds, bytes.Join([][]byte{data(7, "old"), ack, data(7, "older"), data(fuzzSession, "new")}, nil))
	// Data before the ACK is dropped.
	seeds = append(seeds, bytes.Join([][]byte{data(fuzzSession, "early"), ack, data(fuzzSession, "late")}, nil))
	// A torn frame (its header promises more than follows), then garbage.
	torn := appendFrame(nil, frame{typ: frameData, session: fuzzSession, payload: bytes.Repeat([]byte{'x'}, 64)})
	seeds = append(seeds, bytes.Join([][]byte{ack, torn[:30], []byte("garbageKSM1KSM"), data(fuzzSession, "after")}, nil))
	// A corrupted checksum and a header claiming more than MaxPayload.
	bad := data(fuzzSession, "corrupt")
	bad[len(bad)-1] ^= 0xff
	huge := appendFrame(nil, frame{typ: frameData, session: fuzzSession})
	huge[9], huge[10] = 0xff, 0xff
	seeds = append(seeds, bytes.Join([][]byte{ack, bad, huge, data(fuzzSession, "ok"), closeF, data(fuzzSession, "after close")}, nil))
	// A full-size frame and the resync padding.
	seeds = append(seeds, bytes.Join([][]byte{resyncPadding[:100], ack, data(fuzzSession, string(bytes.Repeat([]byte{'y'}, MaxPayload)))}, nil))
	// Unknown frame type with a valid checksum.
	unk := appendFrame(nil, frame{typ: 9, session: fuzzSession, payload: []byte("?")})
	seeds = append(seeds, bytes.Join([][]byte{ack, unk, data(fuzzSession, "x")}, nil))
	return seeds
}

// decodeAll decodes every frame of stream, read through wrap.
func decodeAll(t *testing.T, stream []byte, wrap func(io.Reader) io.Reader) ([]frame, int, error) {
	fr := newFrameReader(wrap(bytes.NewReader(stream)))
	var frames []frame
	// Each successful next consumes a whole frame and each resync step a
	// byte, so a stream of n bytes ends within n+1 calls.
	for range len(stream) + 1 {
		f, err := fr.next()
		if err != nil {
			return frames, fr.skipped, err
		}
		frames = append(frames, f)
	}
	t.Fatalf("frame reader made no progress on %d bytes", len(stream))
	return nil, 0, nil
}

// FuzzFrameReader feeds arbitrary bytes, as a compromised guest could write
// them, to the frame decoder: it must end, return only well-formed frames
// that really are in the stream in order, and decode the same whatever the
// read boundaries.
func FuzzFrameReader(f *testing.F) {
	for _, s := range seedStreams() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		frames, skipped, err := decodeAll(t, stream, func(r io.Reader) io.Reader { return r })
		if err == nil {
			t.Fatal("decoding ended without an error")
		}
		pos, used := 0, 0
		for i, fr := range frames {
			if !validType(fr.typ) {
				t.Fatalf("frame %d: invalid type %d", i, fr.typ)
			}
			if len(fr.payload) > MaxPayload {
				t.Fatalf("frame %d: payload of %d bytes", i, len(fr.payload))
			}
			enc := appendFrame(nil, fr)
			j := bytes.Index(stream[pos:], enc)
			if j < 0 {
				t.Fatalf("frame %d (%+v) is not in the stream after offset %d", i, fr, pos)
			}
			pos += j + len(enc)
			used += len(enc)
		}
		if used+skipped > len(stream) {
			t.Fatalf("decoded %d bytes and skipped %d of a %d-byte stream", used, skipped, len(stream))
		}

		// Read boundaries do not matter: one byte at a time, or chunks
		// that leave a header buffered without the rest of its frame.
		for _, chunk := range []int{1, 7, 61} {
			again, skipped2, _ := decodeAll(t, stream, func(r io.Reader) io.Reader {
				b, _ := io.ReadAll(r)
				return &chunkReader{data: b, chunk: chunk}
			})
			if len(again) != len(frames) || skipped2 != skipped {
				t.Fatalf("%d-byte reads: %d frames, %d skipped; at once: %d frames, %d skipped", chunk, len(again), skipped2, len(frames), skipped)
			}
			for i := range frames {
				if again[i].typ != frames[i].typ || again[i].session != frames[i].session || !bytes.Equal(again[i].payload, frames[i].payload) {
					t.Fatalf("frame %d differs when read %d bytes at a time: %+v, at once %+v", i, chunk, again[i], frames[i])
				}
			}
		}
	})
}

// FuzzHostReadLoop runs the host's session reader on a stream written by a
// compromised guest: it must deliver exactly the DATA payloads of its own
// session sent after the HELLO_ACK and before a CLOSE, and end when the
// stream ends.
func FuzzHostReadLoop(f *testing.F) {
	for _, s := range seedStreams() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		// What the host should see, from the decoder alone.
		frames, _, _ := decodeAll(t, stream, func(r io.Reader) io.Reader { return r })
		var want []byte
		wantAck := false
	model:
		for _, fr := range frames {
			if fr.session != fuzzSession {
				continue
			}
			switch fr.typ {
			case frameHelloAck:
				wantAck = true
			case frameData:
				if wantAck {
					want = append(want, fr.payload...)
				}
			case frameClose:
				break model
			}
		}

		host, guest := net.Pipe()
		c := newConn(&frameWriter{w: io.Discard}, fuzzSession, Addr{"host"}, Addr{"guest"}, nil)
		acked := make(chan struct{})
		readErr := make(chan error, 1)
		loopDone := make(chan struct{})
		go func() {
			hostReadLoop(host, c, acked, readErr)
			close(loopDone)
		}()
		go func() {
			// In pieces, as a virtio-serial port delivers them.
			for rest := stream; len(rest) > 0; {
				n := min(len(rest), 1+int(rest[0])%64)
				if _, err := guest.Write(rest[:n]); err != nil {
					break
				}
				rest = rest[n:]
			}
			guest.Close()
		}()

		got := make(chan []byte, 1)
		go func() {
			b, _ := io.ReadAll(c)
			got <- b
		}()
		timeout := time.After(fuzzHangTimeout)
		select {
		case <-loopDone:
		case <-timeout:
			t.Fatal("hostReadLoop did not end after the stream ended")
		}
		var data []byte
		select {
		case data = <-got:
		case <-timeout:
			t.Fatal("the session's reader did not see the end")
		}
		isAcked := false
		select {
		case <-acked:
			isAcked = true
		default:
		}
		if isAcked != wantAck {
			t.Fatalf("acked = %v, want %v", isAcked, wantAck)
		}
		if !isAcked {
			select {
			case <-readErr:
			default:
				t.Fatal("an unacknowledged session ended without reporting why")
			}
		}
		if !bytes.Equal(data, want) {
			t.Fatalf("session read %d bytes %q, want %d bytes %q", len(data), trim(data), len(want), trim(want))
		}
	})
}

func trim(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}

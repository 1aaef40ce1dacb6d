// Package serialmux carries one ttrpc connection at a time over a virtio-serial
// port, a single byte stream with no connection boundaries, so that a host that
// reconnects (a restarted shim) can never be fed, or feed the agent, the tail of
// an older connection.
//
// Every byte travels in a frame:
//
//	magic "KSM1" | type u8 | session u32 | length u32 | payload | crc32c u32
//
// The checksum covers type, session, length and payload. A reader that meets a
// bad magic, length or checksum drops one byte and scans for the next magic, so
// it resynchronises after any torn frame. The host opens a session with HELLO
// carrying a fresh random session id; the agent answers HELLO_ACK, closes
// whatever session it had and from then on accepts DATA only for the new id.
// Before HELLO the host writes MaxPayload+frameOverhead zero bytes, so a frame
// torn by the previous host (whose header promised more bytes than were sent) is
// completed with zeros, fails its checksum and cannot swallow the HELLO.
package serialmux

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sync"
)

// Frame types.
const (
	frameHello    byte = 1
	frameHelloAck byte = 2
	frameData     byte = 3
	frameClose    byte = 4
)

const (
	// MaxPayload bounds one frame's payload; larger writes are split.
	MaxPayload = 4 * 1024

	headerLen     = 4 + 1 + 4 + 4
	trailerLen    = 4
	frameOverhead = headerLen + trailerLen
)

var magic = [4]byte{'K', 'S', 'M', '1'}

// crcTable is made on first use rather than at package init: the agent links
// this package, and libcontainer runs the agent again for each container and
// exec, where the Castagnoli tables cost 20 ms of a start under TCG.
var crcTable = sync.OnceValue(func() *crc32.Table { return crc32.MakeTable(crc32.Castagnoli) })

type frame struct {
	typ     byte
	session uint32
	payload []byte
}

// appendFrame encodes f onto buf.
func appendFrame(buf []byte, f frame) []byte {
	start := len(buf)
	buf = append(buf, magic[:]...)
	buf = append(buf, f.typ)
	buf = binary.BigEndian.AppendUint32(buf, f.session)
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(f.payload)))
	buf = append(buf, f.payload...)
	sum := crc32.Checksum(buf[start+4:], crcTable())
	return binary.BigEndian.AppendUint32(buf, sum)
}

// frameReader decodes frames from a byte stream, resynchronising on garbage.
type frameReader struct {
	r *bufio.Reader
	// skipped counts bytes dropped while resynchronising (for tests and logs).
	skipped int
}

func newFrameReader(r io.Reader) *frameReader {
	return &frameReader{r: bufio.NewReaderSize(r, 2*(MaxPayload+frameOverhead))}
}

func validType(t byte) bool { return t >= frameHello && t <= frameClose }

// next returns the next well-formed frame. The payload is a fresh slice.
func (fr *frameReader) next() (frame, error) {
	for {
		hdr, err := fr.r.Peek(headerLen)
		if err != nil {
			return frame{}, err
		}
		if [4]byte(hdr[:4]) != magic {
			fr.drop(1)
			continue
		}
		typ := hdr[4]
		n := binary.BigEndian.Uint32(hdr[9:13])
		if !validType(typ) || n > MaxPayload {
			fr.drop(1)
			continue
		}
		whole, err := fr.r.Peek(headerLen + int(n) + trailerLen)
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return frame{}, fmt.Errorf("serialmux: frame of %d bytes exceeds buffer: %w", n, err)
			}
			return frame{}, err
		}
		body := whole[4 : headerLen+int(n)]
		want := binary.BigEndian.Uint32(whole[headerLen+int(n):])
		if crc32.Checksum(body, crcTable()) != want {
			fr.drop(1)
			continue
		}
		// hdr is stale: the second Peek may have slid the buffer.
		f := frame{
			typ:     typ,
			session: binary.BigEndian.Uint32(whole[5:9]),
			payload: append([]byte(nil), whole[headerLen:headerLen+int(n)]...),
		}
		fr.r.Discard(len(whole))
		return f, nil
	}
}

func (fr *frameReader) drop(n int) {
	d, _ := fr.r.Discard(n)
	fr.skipped += d
}

// resyncPadding is written by the host before HELLO: enough zeros to complete
// any frame a previous host left torn, none of which can start a magic.
var resyncPadding = make([]byte, MaxPayload+frameOverhead)

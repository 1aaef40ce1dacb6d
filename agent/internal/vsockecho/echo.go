// Package vsockecho is a test and benchmark service of the guest agent: it
// echoes, sinks or generates vsock streams so the host can check the vsock
// transport end to end. It runs only when the guest kernel command line
// says kasa.vsock_echo=PORT.
//
// The first byte a client sends picks the mode:
//
//	'e'  echo: everything read is written back; ends when the client
//	     shuts its sending side
//	's'  sink: read to end of stream, then answer the byte count (8 bytes,
//	     little-endian) and the SHA-256 of the data
//	'd'  discard: as 's' but only the count, so that the guest's CPU (slow
//	     under TCG) does not limit a throughput measurement
//	'g'  generate: read a count (8 bytes, little-endian), then send that
//	     many bytes of Stream(count) and close
//	't'  stats: one line "streams=N open=N eof=N errors=N"
package vsockecho

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/containerd/log"
)

// Param is the kernel command-line parameter that enables the service.
const Param = "kasa.vsock_echo"

// PortFromCmdline returns the port kasa.vsock_echo=PORT names in a kernel
// command line, or 0 when the parameter is absent.
func PortFromCmdline(cmdline string) (uint32, error) {
	for _, f := range strings.Fields(cmdline) {
		v, ok := strings.CutPrefix(f, Param+"=")
		if !ok {
			continue
		}
		p, err := strconv.ParseUint(v, 10, 32)
		if err != nil || p == 0 {
			return 0, fmt.Errorf("%s=%q: want a port number", Param, v)
		}
		return uint32(p), nil
	}
	return 0, nil
}

// Stream returns the bytes mode 'g' sends for a count: a 64 KiB
// pseudo-random block seeded by count, repeated. Deterministic, so the host
// can check them without a trailer, and cheap to make in the guest.
func Stream(count uint64) io.Reader {
	var seed [32]byte
	binary.LittleEndian.PutUint64(seed[:], count)
	block := make([]byte, 64<<10)
	rand.NewChaCha8(seed).Read(block)
	return io.LimitReader(&repeat{block: block}, int64(count))
}

type repeat struct {
	block []byte
	off   int
}

func (r *repeat) Read(p []byte) (int, error) {
	n := copy(p, r.block[r.off:])
	r.off = (r.off + n) % len(r.block)
	return n, nil
}

// Stats counts the service's streams.
type Stats struct {
	streams, open, eof, errs atomic.Int64
}

func (s *Stats) String() string {
	return fmt.Sprintf("streams=%d open=%d eof=%d errors=%d", s.streams.Load(), s.open.Load(), s.eof.Load(), s.errs.Load())
}

// Serve handles l's connections until l is closed.
func Serve(ctx context.Context, l net.Listener) error {
	var st Stats
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		st.streams.Add(1)
		st.open.Add(1)
		go func() {
			// Counted before the close, which is what a client waits for.
			defer c.Close()
			defer st.open.Add(-1)
			if err := serveConn(c, &st); err != nil {
				st.errs.Add(1)
				log.G(ctx).WithError(err).Debug("vsock echo stream failed")
				return
			}
			st.eof.Add(1)
		}()
	}
}

func serveConn(c net.Conn, st *Stats) error {
	var mode [1]byte
	if _, err := io.ReadFull(c, mode[:]); err != nil {
		return err
	}
	switch mode[0] {
	case 'e':
		if _, err := io.Copy(c, c); err != nil {
			return err
		}
		return nil
	case 's':
		h := sha256.New()
		n, err := io.Copy(h, c)
		if err != nil {
			return err
		}
		out := binary.LittleEndian.AppendUint64(nil, uint64(n))
		_, err = c.Write(h.Sum(out))
		return err
	case 'd':
		n, err := io.Copy(io.Discard, c)
		if err != nil {
			return err
		}
		_, err = c.Write(binary.LittleEndian.AppendUint64(nil, uint64(n)))
		return err
	case 'g':
		var cnt [8]byte
		if _, err := io.ReadFull(c, cnt[:]); err != nil {
			return err
		}
		_, err := io.Copy(c, Stream(binary.LittleEndian.Uint64(cnt[:])))
		return err
	case 't':
		_, err := fmt.Fprintf(c, "%s\n", st)
		return err
	default:
		return errors.New("unknown mode")
	}
}

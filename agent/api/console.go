package api

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The debug console: a root shell on a pty in the guest, for `kasa exec`,
// served only when the VM was booted with DebugConsoleParam. The client
// opens a stream to DebugConsoleVsockPort, sends the console header and
// then frames; the agent answers with the pty's output, raw, and closes the
// stream when the shell has exited. console.md beside this file describes
// the format.
const (
	// DebugConsoleVsockPort is the guest's AF_VSOCK port of the console
	// (Kata's is 1026, which Kasa's port forwarding has).
	DebugConsoleVsockPort = 1027
	// DebugConsoleParam on the guest kernel command line turns the console
	// on; without it the agent does not listen on DebugConsoleVsockPort.
	DebugConsoleParam = "kasa.debug_console"
	// ConsoleVersion is the version of the header and frames below.
	ConsoleVersion = 1
	// ConsoleHeaderSize is the header's fixed size.
	ConsoleHeaderSize = 4
	// ConsoleFrameHeaderSize precedes every frame's payload: type, length.
	ConsoleFrameHeaderSize = 3
	// MaxConsoleFramePayload bounds a frame's payload.
	MaxConsoleFramePayload = 4096
)

var consoleMagic = [2]byte{'K', 'C'}

// ConsoleHeader returns the header a client sends first.
func ConsoleHeader() []byte {
	return []byte{consoleMagic[0], consoleMagic[1], ConsoleVersion, 0}
}

// CheckConsoleHeader accepts exactly the header of ConsoleHeader.
func CheckConsoleHeader(b []byte) error {
	if len(b) != ConsoleHeaderSize || b[0] != consoleMagic[0] || b[1] != consoleMagic[1] || b[3] != 0 {
		return errors.New("console: bad header")
	}
	if b[2] != ConsoleVersion {
		return fmt.Errorf("console: version %d, want %d", b[2], ConsoleVersion)
	}
	return nil
}

// ConsoleFrameType says what a frame carries.
type ConsoleFrameType uint8

const (
	// ConsoleData is input for the pty.
	ConsoleData ConsoleFrameType = 'D'
	// ConsoleResize carries the terminal's size: rows, columns (uint16 each,
	// big-endian).
	ConsoleResize ConsoleFrameType = 'W'
)

// ConsoleFrame is one client-to-guest frame.
type ConsoleFrame struct {
	Type    ConsoleFrameType
	Payload []byte
}

// WriteConsoleData writes p as data frames of at most
// MaxConsoleFramePayload bytes each.
func WriteConsoleData(w io.Writer, p []byte) error {
	for len(p) > 0 {
		n := min(len(p), MaxConsoleFramePayload)
		if err := writeConsoleFrame(w, ConsoleData, p[:n]); err != nil {
			return err
		}
		p = p[n:]
	}
	return nil
}

// WriteConsoleResize writes a resize frame.
func WriteConsoleResize(w io.Writer, rows, cols uint16) error {
	var b [4]byte
	binary.BigEndian.PutUint16(b[0:], rows)
	binary.BigEndian.PutUint16(b[2:], cols)
	return writeConsoleFrame(w, ConsoleResize, b[:])
}

func writeConsoleFrame(w io.Writer, t ConsoleFrameType, p []byte) error {
	b := make([]byte, ConsoleFrameHeaderSize+len(p))
	b[0] = byte(t)
	binary.BigEndian.PutUint16(b[1:], uint16(len(p)))
	copy(b[ConsoleFrameHeaderSize:], p)
	_, err := w.Write(b)
	return err
}

// ReadConsoleFrame reads one frame into buf (which must hold
// MaxConsoleFramePayload bytes); the frame's payload aliases buf. An
// unknown type, an oversized payload or a resize of the wrong size is an
// error: the stream is then unusable.
func ReadConsoleFrame(r io.Reader, buf []byte) (ConsoleFrame, error) {
	var h [ConsoleFrameHeaderSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return ConsoleFrame{}, err
	}
	t, n := ConsoleFrameType(h[0]), int(binary.BigEndian.Uint16(h[1:]))
	switch {
	case t != ConsoleData && t != ConsoleResize:
		return ConsoleFrame{}, fmt.Errorf("console: unknown frame type %#x", h[0])
	case n > MaxConsoleFramePayload || n > len(buf):
		return ConsoleFrame{}, fmt.Errorf("console: frame of %d bytes, at most %d", n, MaxConsoleFramePayload)
	case t == ConsoleResize && n != 4:
		return ConsoleFrame{}, fmt.Errorf("console: resize frame of %d bytes, want 4", n)
	}
	if _, err := io.ReadFull(r, buf[:n]); err != nil {
		return ConsoleFrame{}, err
	}
	return ConsoleFrame{Type: t, Payload: buf[:n]}, nil
}

// Size returns a resize frame's rows and columns.
func (f ConsoleFrame) Size() (rows, cols uint16) {
	return binary.BigEndian.Uint16(f.Payload[0:]), binary.BigEndian.Uint16(f.Payload[2:])
}

package guestlog

import (
	"strings"
	"time"
	"unicode/utf8"
)

// Limits on what one sandbox's guest log costs the host. The guest is
// hostile: it may send lines as fast as vsock carries them.
const (
	// MaxLineBytes bounds a line as logged (after escaping); longer lines
	// are cut and marked.
	MaxLineBytes = 1024
	// LinesPerSecond and BurstLines: a token bucket of lines. The burst
	// takes a debug boot's kernel log (about 270 lines).
	LinesPerSecond = 50
	BurstLines     = 500
	// BytesPerSecond and BurstBytes: a token bucket of bytes written to
	// the shim's log, each line counted with LineOverhead for what the
	// shim adds (time, level, sandbox and container ids, runtime, source)
	// and with the quoting of its text. A minute of flood costs
	// containerd's log at most about 650 KiB.
	BytesPerSecond = 8 << 10
	BurstBytes     = 128 << 10
	LineOverhead   = 200
	// SummaryEvery paces the "suppressed" lines of a flood.
	SummaryEvery = time.Second
)

const truncatedMark = "…[truncated]"

// limiter is two token buckets, lines and bytes; a line passes only when
// both have room for it.
type limiter struct {
	lines, bytes float64
	last         time.Time
}

func newLimiter(now time.Time) *limiter {
	return &limiter{lines: BurstLines, bytes: BurstBytes, last: now}
}

// refill adds what the time since the last call earned, and says whether
// a line could pass now: a flood is dropped before any work on its text.
func (l *limiter) refill(now time.Time) bool {
	if dt := now.Sub(l.last).Seconds(); dt > 0 {
		l.lines = min(BurstLines, l.lines+dt*LinesPerSecond)
		l.bytes = min(BurstBytes, l.bytes+dt*BytesPerSecond)
		l.last = now
	}
	return l.lines >= 1 && l.bytes >= LineOverhead
}

// logCost is what logging msg adds to the shim's log, about: the text,
// the backslashes and quotes the log's quoting doubles, the shim's fields.
func logCost(msg string) int {
	return len(msg) + strings.Count(msg, `\`) + strings.Count(msg, `"`) + LineOverhead
}

// allow takes one line costing n bytes from the buckets if both have room.
func (l *limiter) allow(now time.Time, n int) bool {
	if !l.refill(now) || l.bytes < float64(n) {
		return false
	}
	l.lines--
	l.bytes -= float64(n)
	return true
}

// sanitize returns b as text safe for a log line: control characters and
// invalid UTF-8 escaped as \xNN, at most MaxLineBytes bytes (cut and
// marked), truncated marking a line the reader already cut.
func sanitize(b []byte, truncated bool) string {
	var s strings.Builder
	limit := MaxLineBytes - len(truncatedMark)
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		var piece string
		switch {
		case r == utf8.RuneError && size <= 1, r < 0x20 && r != '\t', r == 0x7f, r >= 0x80 && r < 0xa0:
			piece = escapeBytes(b[:size])
		default:
			piece = string(b[:size])
		}
		if s.Len()+len(piece) > limit {
			truncated = true
			break
		}
		s.WriteString(piece)
		b = b[size:]
	}
	if truncated {
		s.WriteString(truncatedMark)
	}
	return s.String()
}

func escapeBytes(b []byte) string {
	const hex = "0123456789abcdef"
	out := make([]byte, 0, 4*len(b))
	for _, c := range b {
		out = append(out, '\\', 'x', hex[c>>4], hex[c&15])
	}
	return string(out)
}

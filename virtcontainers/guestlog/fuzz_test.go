package guestlog

import (
	"bytes"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
)

// FuzzGuestLogStream feeds arbitrary guest bytes to the reader: every line
// it logs is valid UTF-8 without control characters (but tab), at most
// MaxLineBytes long, and nothing it reads is lost without a count.
func FuzzGuestLogStream(f *testing.F) {
	f.Add([]byte("a6 container created container=c1\nk4 virtio: odd\n"))
	f.Add([]byte("no format \x1b[2J\x00\xff\n\n\na9 x\nk"))
	f.Add(append(bytes.Repeat([]byte("\x1b"), 3000), '\n'))
	f.Fuzz(func(t *testing.T, stream []byte) {
		logger, hook := test.NewNullLogger()
		logger.SetLevel(logrus.DebugLevel)
		now := time.Unix(1, 0)
		fw := &Forwarder{cfg: Config{Log: logrus.NewEntry(logger), now: func() time.Time { return now }}, lim: newLimiter(now)}
		fw.read(bytes.NewReader(stream))
		fw.flushSuppressed()
		for _, e := range hook.AllEntries() {
			if len(e.Message) > MaxLineBytes || !utf8.ValidString(e.Message) {
				t.Fatalf("logged %d bytes, valid UTF-8 %v: %q", len(e.Message), utf8.ValidString(e.Message), e.Message)
			}
			if strings.ContainsFunc(e.Message, func(r rune) bool { return (r < 0x20 && r != '\t') || r == 0x7f || (r >= 0x80 && r < 0xa0) }) {
				t.Fatalf("control character logged: %q", e.Message)
			}
		}
	})
}

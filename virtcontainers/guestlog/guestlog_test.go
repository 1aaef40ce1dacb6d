package guestlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/kasa-runtime/kasa/agent/api"
)

// clock is a fake clock the flood advances by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// start forwards what the test writes to the returned conn, once, into a
// logger writing JSON to out.
func start(t *testing.T, clk *clock) (net.Conn, *Forwarder, *bytes.Buffer) {
	t.Helper()
	guest, host := net.Pipe()
	var once sync.Once
	out := &bytes.Buffer{}
	l := logrus.New()
	l.SetOutput(out)
	l.SetFormatter(&logrus.JSONFormatter{})
	cfg := Config{
		Dial: func(ctx context.Context) (net.Conn, error) {
			var c net.Conn
			once.Do(func() { c = host })
			if c == nil {
				<-ctx.Done()
				return nil, errors.New("no second stream in this test")
			}
			return c, nil
		},
		Log: l.WithField("sandbox", "sb1"),
		now: clk.now,
	}
	return guest, Start(context.Background(), cfg), out
}

func TestForwardsLinesWithSourceAndSandbox(t *testing.T) {
	clk := &clock{t: time.Unix(1000, 0)}
	guest, f, out := start(t, clk)
	guest.Write(api.FormatGuestLogLine(api.GuestLogAgent, api.LogInfo, "container created id=marker-1"))
	guest.Write(api.FormatGuestLogLine(api.GuestLogKernel, api.LogWarning, "virtio: something odd"))
	guest.Write([]byte("no format \x1b[31mred\x00\n"))
	guest.Write(append(bytes.Repeat([]byte("x"), 3*api.MaxGuestLogLine), '\n'))
	guest.Write([]byte("after the long line\n"))
	guest.Close()
	f.Stop(5 * time.Second)

	got := out.String()
	for _, want := range []string{
		`"level":"info","msg":"container created id=marker-1","sandbox":"sb1","source":"agent"`,
		`"level":"warning","msg":"virtio: something odd","sandbox":"sb1","source":"kernel"`,
		`"msg":"no format \\x1b[31mred\\x00","sandbox":"sb1","source":"guest"`,
		`"msg":"after the long line"`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("log lacks %s:\n%s", want, got)
		}
	}
	lines := strings.Split(strings.TrimSpace(got), "\n")
	if len(lines) != 5 {
		t.Fatalf("want 5 lines (the long one once, cut), got %d:\n%s", len(lines), got)
	}
	long := lines[3]
	if !strings.Contains(long, truncatedMark) || len(long) > MaxLineBytes+200 {
		t.Errorf("long line not cut to %d bytes and marked: %d bytes", MaxLineBytes, len(long))
	}
}

// TestFloodIsBounded plays a guest that sends lines as fast as it can for
// ten (fake) seconds: the log gets at most the bucket's burst plus its
// rate, bytes likewise, and one line counts what was suppressed.
func TestFloodIsBounded(t *testing.T) {
	clk := &clock{t: time.Unix(1000, 0)}
	guest, f, out := start(t, clk)
	const seconds, perSecond = 10, 5000
	line := api.FormatGuestLogLine(api.GuestLogAgent, api.LogErr, strings.Repeat("flood ", 150))
	sent := 0
	for s := 0; s < seconds; s++ {
		for i := 0; i < perSecond; i++ {
			if _, err := guest.Write(line); err != nil {
				t.Fatal(err)
			}
			sent++
		}
		clk.add(time.Second)
	}
	guest.Close()
	f.Stop(5 * time.Second)

	logged, suppressed, summaries := 0, 0, 0
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		switch {
		case strings.Contains(l, "flood flood"):
			logged++
		case strings.Contains(l, "lines suppressed"):
			summaries++
			var n int
			if _, err := fmt.Sscanf(l[strings.Index(l, `"suppressed":`):], `"suppressed":%d`, &n); err != nil {
				t.Fatalf("summary without a count: %s", l)
			}
			suppressed += n
		default:
			t.Errorf("unexpected line: %s", l)
		}
	}
	msgBytes := logCost(string(line[3 : len(line)-1]))
	maxLines := min(BurstLines+seconds*LinesPerSecond, (BurstBytes+seconds*BytesPerSecond)/msgBytes+1)
	t.Logf("sent %d lines (%d bytes); logged %d lines, %d summaries, %d suppressed; containerd log %d bytes",
		sent, sent*len(line), logged, summaries, suppressed, out.Len())
	if logged > maxLines {
		t.Errorf("logged %d flood lines, the limit allows %d", logged, maxLines)
	}
	if logged == 0 || summaries == 0 {
		t.Errorf("logged %d lines and %d summaries: want some of each", logged, summaries)
	}
	if logged+suppressed != sent {
		t.Errorf("logged %d + suppressed %d != sent %d: lines lost without a count", logged, suppressed, sent)
	}
	if maxBytes := BurstBytes + seconds*BytesPerSecond + summaries*300; out.Len() > maxBytes {
		t.Errorf("the flood wrote %d bytes of log, the limit allows about %d", out.Len(), maxBytes)
	}
	if summaries > seconds+1 {
		t.Errorf("%d summaries in %d seconds: summaries are not rate-limited", summaries, seconds)
	}
}

func TestSanitize(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain text\tand tab", "plain text\tand tab"},
		{"esc\x1b[2J bell\a del\x7f", `esc\x1b[2J bell\x07 del\x7f`},
		{"bad utf8 \xff\xfe ok ü", `bad utf8 \xff\xfe ok ü`},
		{"c1 \u0085 control", `c1 \xc2\x85 control`},
	} {
		if got := sanitize([]byte(tc.in), false); got != tc.want {
			t.Errorf("sanitize(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	long := sanitize(bytes.Repeat([]byte{0}, MaxLineBytes), false)
	if len(long) > MaxLineBytes || !strings.HasSuffix(long, truncatedMark) {
		t.Errorf("escaped long line: %d bytes, marked %v", len(long), strings.HasSuffix(long, truncatedMark))
	}
}

// BenchmarkFlood is what a flooding guest costs the shim per line once the
// buckets are empty, and per line that passes.
func BenchmarkFlood(b *testing.B) {
	for _, tc := range []struct {
		name  string
		empty bool
	}{{"suppressed", true}, {"logged", false}} {
		b.Run(tc.name, func(b *testing.B) {
			line := api.FormatGuestLogLine(api.GuestLogAgent, api.LogErr, strings.Repeat("flood \x1b ", 100))
			stream := bytes.Repeat(line, b.N)
			l := logrus.New()
			l.SetOutput(io.Discard)
			now := time.Unix(1, 0)
			f := &Forwarder{cfg: Config{Log: logrus.NewEntry(l), now: func() time.Time { return now }}, lim: newLimiter(now)}
			if tc.empty {
				f.lim.lines = 0
			} else {
				f.lim.lines, f.lim.bytes = 1e18, 1e18
			}
			b.SetBytes(int64(len(line)))
			b.ResetTimer()
			f.read(bytes.NewReader(stream))
		})
	}
}

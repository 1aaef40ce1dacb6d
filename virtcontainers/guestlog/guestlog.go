// Package guestlog writes a sandbox's guest log (the agent's and the guest
// kernel's lines, agent/api/guestlog.md) to the shim's log, with the
// sandbox's fields and source=agent|kernel|guest, bounded: lines are cut
// at MaxLineBytes and escaped, and a token bucket per sandbox caps lines
// and bytes per second; what it drops is counted in a "suppressed" line.
package guestlog

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/kasa-runtime/kasa/agent/api"
)

const (
	// redialEvery paces reconnecting after the stream failed or ended
	// while the VM runs.
	redialEvery = time.Second
	// dialTimeout bounds one connection attempt.
	dialTimeout = 5 * time.Second
	// readBuffer is the reader's only buffer: a longer line is cut.
	readBuffer = api.MaxGuestLogLine
)

// Config says where the stream comes from and where lines go.
type Config struct {
	// Dial opens a stream to the guest's api.GuestLogVsockPort.
	Dial func(ctx context.Context) (net.Conn, error)
	// Log receives the lines; it carries the sandbox's fields.
	Log *logrus.Entry
	// now is the clock of the limiter (time.Now; tests replace it).
	now func() time.Time
}

// Forwarder copies the guest log to Log until Stop.
type Forwarder struct {
	cfg    Config
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	conn   net.Conn
	closed bool // Stop gave up waiting: no stream is read any more

	lim         *limiter
	suppressed  int
	lastSummary time.Time
}

// Start begins forwarding in the background.
func Start(ctx context.Context, cfg Config) *Forwarder {
	if cfg.now == nil {
		cfg.now = time.Now
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	f := &Forwarder{cfg: cfg, cancel: cancel, done: make(chan struct{}), lim: newLimiter(cfg.now())}
	go f.run(ctx)
	return f
}

// Stop ends forwarding: no new stream is opened, and the current one is
// read until it ends (the VM is gone: what the guest sent last is logged)
// or wait has passed. A nil Forwarder does nothing.
func (f *Forwarder) Stop(wait time.Duration) {
	if f == nil {
		return
	}
	f.cancel()
	select {
	case <-f.done:
		return
	case <-time.After(wait):
	}
	f.mu.Lock()
	f.closed = true
	if f.conn != nil {
		f.conn.Close()
	}
	f.mu.Unlock()
	<-f.done
}

func (f *Forwarder) run(ctx context.Context) {
	defer close(f.done)
	defer f.flushSuppressed()
	for ctx.Err() == nil {
		dctx, cancel := context.WithTimeout(ctx, dialTimeout)
		c, err := f.cfg.Dial(dctx)
		cancel()
		if err == nil {
			f.mu.Lock()
			f.conn = c
			if f.closed {
				c.Close()
			}
			f.mu.Unlock()
			err = f.read(c)
			c.Close()
			if errors.Is(err, io.EOF) {
				// The guest ended the stream: powered off, or hostile.
				// Either way, try again at the pace below.
				err = nil
			}
		}
		if err != nil && ctx.Err() == nil {
			f.cfg.Log.WithError(err).Debug("guest log stream")
		}
		select {
		case <-ctx.Done():
		case <-time.After(redialEvery):
		}
	}
}

// read logs c's lines until it fails; it holds one readBuffer.
func (f *Forwarder) read(c io.Reader) error {
	r := bufio.NewReaderSize(c, readBuffer)
	cut := false // the current line was cut; drop the rest of it
	for {
		line, err := r.ReadSlice('\n')
		switch {
		case err == nil:
			if !cut {
				f.line(line[:len(line)-1], false)
			}
			cut = false
		case errors.Is(err, bufio.ErrBufferFull):
			if !cut {
				f.line(line, true)
			}
			cut = true
		default:
			if len(line) > 0 && !cut {
				f.line(line, false)
			}
			return err
		}
	}
}

// line logs one line if the limiter lets it through.
func (f *Forwarder) line(raw []byte, truncated bool) {
	now := f.cfg.now()
	if !f.lim.refill(now) {
		f.suppressed++
		return
	}
	src, level, text := api.ParseGuestLogLine(raw)
	msg := sanitize(text, truncated)
	if !f.lim.allow(now, logCost(msg)) {
		f.suppressed++
		return
	}
	if now.Sub(f.lastSummary) >= SummaryEvery {
		f.flushSuppressed()
		f.lastSummary = now
	}
	f.cfg.Log.WithField("source", src.String()).Log(logrusLevel(level), msg)
}

func (f *Forwarder) flushSuppressed() {
	if f.suppressed > 0 {
		f.cfg.Log.WithField("source", "guest").WithField("suppressed", f.suppressed).
			Warnf("guest log: %d lines suppressed (more than %d lines or %d bytes a second)", f.suppressed, LinesPerSecond, BytesPerSecond)
		f.suppressed = 0
	}
}

// logrusLevel maps a syslog priority to the shim's levels. Debug lines
// are logged at info: the guest sends them only when agent.kata.enable_debug
// asked for them, whatever the shim's own level.
func logrusLevel(p int) logrus.Level {
	switch {
	case p <= api.LogErr:
		return logrus.ErrorLevel
	case p == api.LogWarning:
		return logrus.WarnLevel
	}
	return logrus.InfoLevel
}

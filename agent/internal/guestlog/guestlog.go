// Package guestlog sends the agent's own log and the guest kernel's log to
// the host: lines (api.FormatGuestLogLine) are queued from boot on, in a
// bounded queue, and written to the one host stream on
// api.GuestLogVsockPort when there is one. The format is
// agent/api/guestlog.md.
package guestlog

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/sirupsen/logrus"

	"github.com/kasa-runtime/kasa/agent/api"
)

// MaxQueued bounds the bytes waiting for the host; lines that do not fit
// are dropped and counted, and a line saying how many follows once there is
// room again.
const MaxQueued = 256 << 10

// writeTimeout bounds one write to the host: a host that stops reading
// loses its stream, not the agent's progress.
const writeTimeout = 10 * time.Second

// Queue holds lines for the host.
type Queue struct {
	mu      sync.Mutex
	cond    *sync.Cond
	lines   [][]byte
	bytes   int
	dropped int
}

// NewQueue returns an empty queue.
func NewQueue() *Queue {
	q := &Queue{}
	q.cond = sync.NewCond(&q.mu)
	return q
}

// Add queues one line; it never blocks.
func (q *Queue) Add(src api.GuestLogSource, level int, text string) {
	line := api.FormatGuestLogLine(src, level, text)
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.bytes+len(line) > MaxQueued {
		q.dropped++
		return
	}
	if q.dropped > 0 {
		note := api.FormatGuestLogLine(api.GuestLogAgent, api.LogWarning,
			fmt.Sprintf("guest log queue full: %d lines dropped", q.dropped))
		q.lines = append(q.lines, note)
		q.bytes += len(note)
		q.dropped = 0
	}
	q.lines = append(q.lines, line)
	q.bytes += len(line)
	q.cond.Signal()
}

// next waits for queued lines and takes them all.
func (q *Queue) next() [][]byte {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.lines) == 0 {
		q.cond.Wait()
	}
	lines := q.lines
	q.lines, q.bytes = nil, 0
	return lines
}

// putBack returns lines a failed write did not send to the queue's front.
func (q *Queue) putBack(lines [][]byte) {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := 0
	for _, l := range lines {
		n += len(l)
	}
	if q.bytes+n > MaxQueued {
		q.dropped += len(lines)
		return
	}
	q.lines = append(lines, q.lines...)
	q.bytes += n
}

// Serve accepts the host's streams on l; the newest one gets the lines,
// an older one is closed. It returns when l is closed.
func (q *Queue) Serve(ctx context.Context, l net.Listener) error {
	conns := make(chan net.Conn)
	go q.send(conns)
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) {
				return err
			}
			time.Sleep(100 * time.Millisecond)
			continue
		}
		conns <- c
	}
}

// send writes queued lines to the current stream.
func (q *Queue) send(conns <-chan net.Conn) {
	var cur net.Conn
	lines := make(chan [][]byte)
	go func() {
		for {
			lines <- q.next()
		}
	}()
	var pending [][]byte
	for {
		if cur == nil {
			cur = <-conns
		}
		if pending == nil {
			select {
			case c := <-conns:
				cur.Close()
				cur = c
				continue
			case pending = <-lines:
			}
		}
		var buf []byte
		for _, l := range pending {
			buf = append(buf, l...)
		}
		cur.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := cur.Write(buf); err != nil {
			cur.Close()
			cur = nil
			q.putBack(pending)
		}
		pending = nil
	}
}

// Hook is a logrus hook that queues the agent's entries.
type Hook struct {
	q *Queue
}

// NewHook returns a hook feeding q.
func NewHook(q *Queue) *Hook { return &Hook{q: q} }

// Levels are all of them: the logger's own level filters first.
func (h *Hook) Levels() []logrus.Level { return logrus.AllLevels }

// Fire queues e as "message key=value ...".
func (h *Hook) Fire(e *logrus.Entry) error {
	var b strings.Builder
	b.WriteString(e.Message)
	keys := make([]string, 0, len(e.Data))
	for k := range e.Data {
		if k != "component" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%v", k, e.Data[k])
	}
	h.q.Add(api.GuestLogAgent, syslogLevel(e.Level), b.String())
	return nil
}

func syslogLevel(l logrus.Level) int {
	switch l {
	case logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel:
		return api.LogErr
	case logrus.WarnLevel:
		return api.LogWarning
	case logrus.InfoLevel:
		return api.LogInfo
	}
	return api.LogDebug
}

// Start queues the kernel's log beside the agent's (NewHook), and
// serves the host on api.GuestLogVsockPort through listen. With debug, the
// kernel's lines of every level are sent, otherwise warning and above.
func Start(ctx context.Context, q *Queue, debug bool, listen func() (net.Listener, error)) {
	maxKernelLevel := api.LogWarning
	if debug {
		maxKernelLevel = api.LogDebug
	}
	go func() {
		if err := FollowKmsg(q, "/dev/kmsg", maxKernelLevel); err != nil {
			log.G(ctx).WithError(err).Warn("guest log: kernel log not forwarded")
		}
	}()
	l, err := listen()
	if err != nil {
		log.G(ctx).WithError(err).Warn("guest log: service not started; the host gets no guest log")
		return
	}
	log.G(ctx).WithField("port", api.GuestLogVsockPort).Info("guest log service listening")
	go q.Serve(ctx, l)
}

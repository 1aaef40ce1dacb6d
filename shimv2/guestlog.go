package shimv2

import (
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// guestProvokedLogs are the log lines of ttrpc's client that the guest can
// provoke as often as it likes: a reply on a stream the host never opened
// (or closed) costs the guest 10 bytes and the host a line in containerd's
// log. A hostile guest sending them in a loop filled that log at about
// 650 KiB a second (TestHostileGuest). ttrpc logs them through the
// process-wide logger, so they are limited there: at most one line of each
// per guestLogEvery, then one that counts the lines suppressed meanwhile.
var guestProvokedLogs = []string{
	"ttrpc: received message on inactive stream",
	"ttrpc: failed to handle message",
}

const guestLogEvery = 10 * time.Second

// limitedFormatter passes every entry to the logger's own formatter but
// those listed in limited, which it rate-limits.
type limitedFormatter struct {
	logrus.Formatter
	every time.Duration
	now   func() time.Time

	mu      sync.Mutex
	limited map[string]*rateState
}

type rateState struct {
	last       time.Time
	suppressed int
}

// limitGuestProvokedLogs rate-limits guestProvokedLogs on l (the shim's
// logger, which containerd's shim library set up to write to containerd).
// It is idempotent.
func limitGuestProvokedLogs(l *logrus.Logger) {
	if _, ok := l.Formatter.(*limitedFormatter); ok {
		return
	}
	f := &limitedFormatter{Formatter: l.Formatter, every: guestLogEvery, now: time.Now, limited: map[string]*rateState{}}
	for _, m := range guestProvokedLogs {
		f.limited[m] = &rateState{}
	}
	l.SetFormatter(f)
}

// Format returns nothing for a suppressed entry: logrus then writes zero
// bytes.
func (f *limitedFormatter) Format(e *logrus.Entry) ([]byte, error) {
	f.mu.Lock()
	st, ok := f.limited[e.Message]
	if !ok {
		f.mu.Unlock()
		return f.Formatter.Format(e)
	}
	now := f.now()
	if !st.last.IsZero() && now.Sub(st.last) < f.every {
		st.suppressed++
		f.mu.Unlock()
		return nil, nil
	}
	n := st.suppressed
	st.last, st.suppressed = now, 0
	f.mu.Unlock()
	if n > 0 {
		ne := e.WithField("suppressed_since_last", n)
		ne.Level, ne.Message, ne.Caller = e.Level, e.Message, e.Caller
		e = ne
	}
	return f.Formatter.Format(e)
}

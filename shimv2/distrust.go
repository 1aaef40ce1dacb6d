package shimv2

import (
	"sync"
	"time"
)

const (
	// removedKeep is how many deleted containers a shim remembers, and
	// removedFor for how long, for the events that trail their removal.
	removedKeep = 16
	removedFor  = 30 * time.Second
	// unknownIDWarnEvery paces the warnings about ids the guest made up.
	unknownIDWarnEvery = 10 * time.Second
	// unknownIDPause is how long the OOM loop rests after an id it does
	// not know, so that a guest sending nothing else cannot spin it.
	unknownIDPause = time.Second
	// createUnwindWait bounds how long Shutdown waits for a cancelled
	// Create (a VM boot) to undo itself.
	createUnwindWait = 30 * time.Second
)

// recentIDs remembers the last removedKeep ids added, each for removedFor:
// a bounded memory, whatever the pod's life.
type recentIDs struct {
	ids [removedKeep]string
	at  [removedKeep]time.Time
	n   int // next slot
}

func (r *recentIDs) add(id string, now time.Time) {
	r.ids[r.n], r.at[r.n] = id, now
	r.n = (r.n + 1) % removedKeep
}

func (r *recentIDs) has(id string, now time.Time) bool {
	for i, v := range r.ids {
		if v == id && id != "" && now.Sub(r.at[i]) <= removedFor {
			return true
		}
	}
	return false
}

// rateLimit lets one warning through per unknownIDWarnEvery and counts
// the ones it held back.
type rateLimit struct {
	mu      sync.Mutex
	last    time.Time
	dropped int
}

// allow reports whether to warn now, and how many were held back since
// the last warning.
func (l *rateLimit) allow(now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() && now.Sub(l.last) < unknownIDWarnEvery {
		l.dropped++
		return false, 0
	}
	n := l.dropped
	l.last, l.dropped = now, 0
	return true, n
}

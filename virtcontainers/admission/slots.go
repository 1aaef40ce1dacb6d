// Package admission bounds how many VMs start at once on a node, across
// every shim process, and measures a VM's start by the time it could run
// rather than by the wall clock of a loaded host.
//
// A boot slot is an exclusive flock on one of N files Dir/slot-<i>. The
// kernel drops the lock when its holder's last descriptor closes, so a shim
// that crashes or is killed frees its slot at once, with nothing to clean
// up. Waiters queue in arrival order: each holds a flock on a ticket file
// Dir/queue/<arrival>-<pid> while it waits, and only the first N live
// tickets try the slots, so a storm of pods is served first come, first
// served instead of by whoever polls luckiest. A ticket whose lock is free
// belongs to a dead waiter and is removed by the next waiter that sees it.
package admission

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Dir holds the slot files and the queue; on /run, so a reboot clears it.
var Dir = "/run/kasa/boot-slots"

const (
	// pollInterval is how often a waiter looks at the queue and the slots:
	// a freed flock wakes nobody, so waiters poll. Each poll costs a
	// directory read and a few flock probes.
	pollInterval = 100 * time.Millisecond
	// staleNewTicket is how old an unlocked ticket still being created
	// (".new-*") must be before another waiter removes it: its creator
	// locks it a moment after creating it.
	staleNewTicket = 10 * time.Second
	// maxSlots bounds N: more than any node boots at once.
	maxSlots = 1024
)

// Slots is a node-wide set of N boot slots under a directory.
type Slots struct {
	dir string
	n   int
}

// New returns the N slots under dir (normally Dir). Every process on the
// node that uses the same dir shares the same slots; processes configured
// with different N share the first min(N) of them.
func New(dir string, n int) (*Slots, error) {
	if n < 1 || n > maxSlots {
		return nil, fmt.Errorf("boot slots: %d slots: must be 1..%d", n, maxSlots)
	}
	if err := os.MkdirAll(filepath.Join(dir, "queue"), 0o700); err != nil {
		return nil, fmt.Errorf("boot slots: %w", err)
	}
	return &Slots{dir: dir, n: n}, nil
}

// N is the number of slots.
func (s *Slots) N() int { return s.n }

// Slot is one held boot slot.
type Slot struct {
	f     *os.File
	index int
	// Waited is how long Acquire waited for it.
	Waited time.Duration
}

// Index is the slot's number, 0..N-1.
func (sl *Slot) Index() int { return sl.index }

// Release frees the slot. It is idempotent.
func (sl *Slot) Release() {
	if sl == nil || sl.f == nil {
		return
	}
	sl.f.Close() // closing the only descriptor drops the flock
	sl.f = nil
}

// WaitError is Acquire's error when ctx ended while every slot was held.
type WaitError struct {
	Waited time.Duration
	N      int
	// Ahead is how many live waiters were ahead in the queue when it ended.
	Ahead int
	Err   error
}

func (e *WaitError) Error() string {
	return fmt.Sprintf("waited %s for a boot slot (all %d in use, %d other starts queued ahead): %v",
		e.Waited.Round(time.Millisecond), e.N, e.Ahead, e.Err)
}

func (e *WaitError) Unwrap() error { return e.Err }

// Acquire waits in the queue until it holds a slot or ctx ends. The caller
// releases the slot.
func (s *Slots) Acquire(ctx context.Context) (*Slot, error) {
	start := time.Now()
	ticket, err := s.enqueue()
	if err != nil {
		return nil, err
	}
	defer ticket.leave()

	slots := make([]*os.File, s.n)
	defer func() {
		for _, f := range slots {
			if f != nil {
				f.Close()
			}
		}
	}()
	timer := time.NewTimer(0)
	defer timer.Stop()
	ahead := 0
	for {
		select {
		case <-ctx.Done():
			return nil, &WaitError{Waited: time.Since(start), N: s.n, Ahead: ahead, Err: ctx.Err()}
		case <-timer.C:
		}
		if ahead, err = s.liveAhead(ticket.name); err != nil {
			return nil, err
		}
		if ahead < s.n {
			i, err := s.tryAny(slots)
			if err != nil {
				return nil, err
			}
			if i >= 0 {
				sl := &Slot{f: slots[i], index: i, Waited: time.Since(start)}
				slots[i] = nil
				return sl, nil
			}
		}
		timer.Reset(pollInterval)
	}
}

// tryAny takes the first free slot without blocking; -1 if all are held.
func (s *Slots) tryAny(files []*os.File) (int, error) {
	for i := range files {
		if files[i] == nil {
			f, err := os.OpenFile(filepath.Join(s.dir, fmt.Sprintf("slot-%d", i)), os.O_RDWR|os.O_CREATE, 0o600)
			if err != nil {
				return -1, fmt.Errorf("boot slots: %w", err)
			}
			files[i] = f
		}
		err := unix.Flock(int(files[i].Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return i, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return -1, fmt.Errorf("boot slots: lock %s: %w", files[i].Name(), err)
		}
	}
	return -1, nil
}

type ticket struct {
	f    *os.File
	name string
	path string
}

// enqueue creates this waiter's ticket, locked before it becomes visible
// under its final name, so a visible unlocked ticket is always a dead one.
func (s *Slots) enqueue() (*ticket, error) {
	queue := filepath.Join(s.dir, "queue")
	for attempt := 0; ; attempt++ {
		f, err := os.CreateTemp(queue, ".new-*")
		if err != nil {
			return nil, fmt.Errorf("boot slots: queue: %w", err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
			f.Close()
			os.Remove(f.Name())
			return nil, fmt.Errorf("boot slots: queue: %w", err)
		}
		// Arrival order; the pid only breaks ties.
		name := fmt.Sprintf("%020d-%010d", time.Now().UnixNano(), os.Getpid())
		path := filepath.Join(queue, name)
		err = os.Rename(f.Name(), path)
		if err == nil {
			return &ticket{f: f, name: name, path: path}, nil
		}
		f.Close()
		// Another waiter took the fresh file for a stale one: try again.
		if !errors.Is(err, fs.ErrNotExist) || attempt >= 3 {
			os.Remove(f.Name())
			return nil, fmt.Errorf("boot slots: queue: %w", err)
		}
	}
}

func (t *ticket) leave() {
	os.Remove(t.path)
	t.f.Close()
}

// liveAhead counts the live tickets queued before name, up to N (no more is
// needed to know that this waiter must wait), and removes dead ones.
func (s *Slots) liveAhead(name string) (int, error) {
	queue := filepath.Join(s.dir, "queue")
	entries, err := os.ReadDir(queue)
	if err != nil {
		return 0, fmt.Errorf("boot slots: queue: %w", err)
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".new-") {
			removeStaleNew(filepath.Join(queue, e.Name()))
			continue
		}
		if e.Name() < name {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	ahead := 0
	for _, n := range names {
		if ahead >= s.n {
			break
		}
		if isLive(filepath.Join(queue, n)) {
			ahead++
		}
	}
	return ahead, nil
}

// isLive reports whether a ticket's waiter still holds its lock; a dead
// waiter's ticket is removed.
func isLive(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false // gone already
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		return true
	}
	// Nobody holds it: its waiter died. Remove it while holding the lock,
	// so a waiter racing to reuse the name cannot be hit.
	os.Remove(path)
	return false
}

func removeStaleNew(path string) {
	st, err := os.Stat(path)
	if err != nil || time.Since(st.ModTime()) < staleNewTicket {
		return
	}
	isLive(path)
}

// DefaultSlots is N when runtime.max_concurrent_boots is 0, from the host's
// CPUs. Under TCG a booting guest keeps one host CPU busy for its whole
// boot, so more boots than CPUs only share them out and every boot gets
// slower (measured in README.md's "Many pods at once"). Under KVM a boot is
// mostly waiting (QEMU's start, the guest's I/O), so a few per CPU overlap
// well.
func DefaultSlots(kvm bool, cpus int) int {
	if kvm {
		return min(max(4*cpus, 1), maxSlots)
	}
	return min(max(cpus, 1), maxSlots)
}

// Queued counts the starts waiting for a slot under dir now (live or not
// yet reaped tickets); 0 if there is no queue.
func Queued(dir string) int {
	entries, _ := os.ReadDir(filepath.Join(dir, "queue"))
	n := 0
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".new-") {
			n++
		}
	}
	return n
}

package container

import (
	"bufio"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// oomQueueLimit bounds the OOM events kept for a host that does not ask;
// the oldest are dropped first.
const oomQueueLimit = 1024

// oomQueue holds container ids, one per OOM kill, until GetOOMEvent takes
// them.
type oomQueue struct {
	mu      sync.Mutex
	ids     []string
	changed chan struct{}
}

func newOOMQueue() *oomQueue { return &oomQueue{changed: make(chan struct{})} }

func (q *oomQueue) push(id string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.ids) >= oomQueueLimit {
		q.ids = q.ids[1:]
	}
	q.ids = append(q.ids, id)
	close(q.changed)
	q.changed = make(chan struct{})
}

// next waits for an event or for ctx to end.
func (q *oomQueue) next(ctx context.Context) (string, error) {
	for {
		q.mu.Lock()
		if len(q.ids) > 0 {
			id := q.ids[0]
			q.ids = q.ids[1:]
			q.mu.Unlock()
			return id, nil
		}
		ch := q.changed
		q.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

// oomWatcher follows the oom_kill counter of one cgroup's memory.events
// with inotify and reports each increment.
type oomWatcher struct {
	file   *os.File // the inotify instance
	path   string
	report func()
	done   chan struct{}
	last   uint64
}

// watchOOM starts watching cgroupDir; report is called once per OOM kill.
func watchOOM(cgroupDir string, report func()) (*oomWatcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, os.NewSyscallError("inotify_init1", err)
	}
	w := &oomWatcher{file: os.NewFile(uintptr(fd), "inotify"), path: filepath.Join(cgroupDir, "memory.events"), report: report, done: make(chan struct{})}
	if _, err := unix.InotifyAddWatch(fd, w.path, unix.IN_MODIFY); err != nil {
		w.file.Close()
		return nil, &os.PathError{Op: "inotify_add_watch", Path: w.path, Err: err}
	}
	w.last, _ = readOOMKills(w.path)
	go w.run()
	return w, nil
}

func (w *oomWatcher) run() {
	defer close(w.done)
	buf := make([]byte, 4096)
	for {
		if _, err := w.file.Read(buf); err != nil {
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
				continue
			}
			return // closed by stop, or the cgroup went away
		}
		w.check()
	}
}

func (w *oomWatcher) check() {
	n, err := readOOMKills(w.path)
	if err != nil {
		return
	}
	for ; w.last < n; w.last++ {
		w.report()
	}
}

// stop ends the watch after a last look at the counter, so that a kill
// that ended the container is not missed.
func (w *oomWatcher) stop() {
	w.file.Close()
	<-w.done
	w.check()
}

// readOOMKills returns the oom_kill count of a memory.events file.
func readOOMKills(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), " "); ok && k == "oom_kill" {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, sc.Err()
}

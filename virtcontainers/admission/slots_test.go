package admission

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperEnv makes the test binary a slot holder: it acquires a slot of the
// slots in $KASA_ADMISSION_DIR (N = $KASA_ADMISSION_N), prints "held <i>",
// and releases it when its stdin closes.
const helperEnv = "KASA_ADMISSION_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		os.Exit(holdSlot())
	}
	os.Exit(m.Run())
}

func holdSlot() int {
	n, _ := strconv.Atoi(os.Getenv("KASA_ADMISSION_N"))
	s, err := New(os.Getenv("KASA_ADMISSION_DIR"), n)
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	sl, err := s.Acquire(context.Background())
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	fmt.Println("held", sl.Index())
	io.Copy(io.Discard, os.Stdin)
	sl.Release()
	return 0
}

// holder is a slot-holding process.
type holder struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
}

func startHolder(t *testing.T, dir string, n int) *holder {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1", "KASA_ADMISSION_DIR="+dir, "KASA_ADMISSION_N="+strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &holder{cmd: cmd, stdin: stdin, lines: make(chan string, 4)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
		close(h.lines)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return h
}

// held waits for the holder to report its slot.
func (h *holder) held(t *testing.T) int {
	t.Helper()
	select {
	case l, ok := <-h.lines:
		if !ok || !strings.HasPrefix(l, "held ") {
			t.Fatalf("holder %d: got %q, want \"held <slot>\"", h.cmd.Process.Pid, l)
		}
		i, _ := strconv.Atoi(strings.TrimPrefix(l, "held "))
		return i
	case <-time.After(30 * time.Second):
		t.Fatalf("holder %d never got a slot", h.cmd.Process.Pid)
	}
	return -1
}

// waiting checks that the holder is queued without a slot: it has a live
// ticket in the queue and has printed nothing.
func (h *holder) waiting(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !hasTicket(dir, h.cmd.Process.Pid) {
		if time.Now().After(deadline) {
			t.Fatalf("holder %d never queued", h.cmd.Process.Pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Several polls of the waiter pass; it must still be waiting.
	time.Sleep(5 * pollInterval)
	select {
	case l := <-h.lines:
		t.Fatalf("holder %d got %q while every slot was held", h.cmd.Process.Pid, l)
	default:
	}
}

func hasTicket(dir string, pid int) bool {
	entries, _ := os.ReadDir(filepath.Join(dir, "queue"))
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), fmt.Sprintf("-%010d", pid)) {
			return true
		}
	}
	return false
}

// TestSlotsAcrossProcesses: with N slots held by other processes a third
// waits; it proceeds when one holder releases; a SIGKILLed holder's slot is
// freed by the kernel and taken by the next waiter.
func TestSlotsAcrossProcesses(t *testing.T) {
	dir := t.TempDir()
	const n = 2
	a, b := startHolder(t, dir, n), startHolder(t, dir, n)
	sa, sb := a.held(t), b.held(t)
	if sa == sb {
		t.Fatalf("two processes hold slot %d at once", sa)
	}

	c := startHolder(t, dir, n)
	c.waiting(t, dir)
	a.stdin.Close() // a releases its slot
	if got := c.held(t); got != sa {
		t.Errorf("waiter got slot %d, want the released slot %d", got, sa)
	}
	if err := a.cmd.Wait(); err != nil {
		t.Errorf("holder a: %v", err)
	}

	d := startHolder(t, dir, n)
	d.waiting(t, dir)
	if err := b.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	b.cmd.Wait()
	if got := d.held(t); got != sb {
		t.Errorf("waiter got slot %d, want the killed holder's slot %d", got, sb)
	}
	// Nothing is left in the queue once everyone holds a slot.
	if entries, _ := os.ReadDir(filepath.Join(dir, "queue")); len(entries) != 0 {
		t.Errorf("queue not empty: %v", entries)
	}
}

// oneSlotHeld returns one slot under dir, held.
func oneSlotHeld(t *testing.T, dir string) (*Slots, *Slot) {
	t.Helper()
	s, err := New(dir, 1)
	if err != nil {
		t.Fatal(err)
	}
	held, err := s.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return s, held
}

// TestAcquireCancel: a waiter whose context ends gets a WaitError wrapping
// the context's error, and leaves the queue.
func TestAcquireCancel(t *testing.T) {
	dir := t.TempDir()
	s, held := oneSlotHeld(t, dir)
	defer held.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 3*pollInterval)
	defer cancel()
	_, err := s.Acquire(ctx)
	var we *WaitError
	if !errors.As(err, &we) || !errors.Is(err, context.DeadlineExceeded) || we.N != 1 {
		t.Fatalf("Acquire = %v, want a WaitError with N 1 wrapping DeadlineExceeded", err)
	}
	if !strings.Contains(err.Error(), "waited") || !strings.Contains(err.Error(), "boot slot") {
		t.Errorf("error %q does not say it waited for a boot slot", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "queue")); len(entries) != 0 {
		t.Errorf("a cancelled waiter left its ticket: %v", entries)
	}
}

// TestQueueOrder: when a slot frees, the waiter that came first gets it,
// and a dead waiter's ticket is skipped and removed.
func TestQueueOrder(t *testing.T) {
	dir := t.TempDir()
	s, held := oneSlotHeld(t, dir)
	// A ticket ahead of everyone, left by a waiter that died (unlocked).
	dead := filepath.Join(dir, "queue", fmt.Sprintf("%020d-%010d", 1, 1))
	if err := os.WriteFile(dead, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	order := make(chan int, 3)
	for i := range 3 {
		go func() {
			sl, err := s.Acquire(context.Background())
			if err != nil {
				t.Error(err)
				order <- -1
				return
			}
			order <- i
			time.Sleep(pollInterval / 2)
			sl.Release()
		}()
		// Each waiter queues before the next one arrives.
		for queued(dir) < i+1 {
			time.Sleep(5 * time.Millisecond)
		}
	}
	held.Release()
	for want := range 3 {
		if got := <-order; got != want {
			t.Errorf("waiter %d got the slot in turn %d", got, want)
		}
	}
	if _, err := os.Stat(dead); err == nil {
		t.Error("the dead waiter's ticket is still queued")
	}
}

// queued counts the live tickets in the queue.
func queued(dir string) int {
	entries, _ := os.ReadDir(filepath.Join(dir, "queue"))
	n := 0
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".new-") && e.Name() != fmt.Sprintf("%020d-%010d", 1, 1) {
			n++
		}
	}
	return n
}

func TestNewRefusesBadN(t *testing.T) {
	for _, n := range []int{0, -1, maxSlots + 1} {
		if _, err := New(t.TempDir(), n); err == nil {
			t.Errorf("New(%d) succeeded", n)
		}
	}
}

func TestDefaultSlots(t *testing.T) {
	for _, c := range []struct {
		kvm        bool
		cpus, want int
	}{
		{false, 2, 2}, {false, 0, 1}, {true, 2, 8}, {true, 1000, maxSlots},
	} {
		if got := DefaultSlots(c.kvm, c.cpus); got != c.want {
			t.Errorf("DefaultSlots(kvm=%v, %d) = %d, want %d", c.kvm, c.cpus, got, c.want)
		}
	}
}

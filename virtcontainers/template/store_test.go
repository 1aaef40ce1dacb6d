package template

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func testSpec(t *testing.T) Spec {
	dir := t.TempDir()
	for _, f := range []string{"vmlinuz", "initrd", "qemu"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("content of "+f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return Spec{QEMU: filepath.Join(dir, "qemu"), Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initrd"),
		MachineType: "q35", VCPUs: 1, MemoryMiB: 4}
}

// fakeBoot stands in for the VM: it writes a page of "guest memory" at 1 MiB
// and a device state, and counts its calls.
func fakeBoot(calls *atomic.Int32) Boot {
	return func(ctx context.Context, mem, state *os.File) error {
		calls.Add(1)
		time.Sleep(100 * time.Millisecond) // long enough for the others to queue
		if _, err := mem.WriteAt([]byte("guest page"), 1<<20); err != nil {
			return err
		}
		_, err := state.Write([]byte("device state"))
		return err
	}
}

// A burst of makers (separate lock descriptors, as separate shims have)
// makes exactly one template, and every one gets it.
func TestGetBurstMakesOne(t *testing.T) {
	spec := testSpec(t)
	key, err := Key(spec)
	if err != nil {
		t.Fatal(err)
	}
	s := Store{Root: filepath.Join(t.TempDir(), "template")}
	var calls atomic.Int32
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.Get(context.Background(), key, spec, fakeBoot(&calls)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := calls.Load(); n != 1 {
		t.Errorf("%d templates made, want 1", n)
	}
	m, err := s.Open(key)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := s.Clone(m)
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Memory.Close()
	defer snap.State.Close()
	page := make([]byte, 10)
	if _, err := snap.Memory.ReadAt(page, 1<<20); err != nil || string(page) != "guest page" {
		t.Errorf("clone memory at 1 MiB: %q, %v", page, err)
	}
	if fi, _ := snap.Memory.Stat(); fi.Size() != 4<<20 {
		t.Errorf("clone memory is %d bytes", fi.Size())
	}
}

// A template that is not whole is not used, and Get makes it again.
func TestBrokenTemplateIsRemade(t *testing.T) {
	spec := testSpec(t)
	key, _ := Key(spec)
	s := Store{Root: t.TempDir()}
	var calls atomic.Int32
	for name, breakIt := range map[string]func(dir string) error{
		"truncated memory": func(dir string) error { return os.Truncate(filepath.Join(dir, memoryName), 4096) },
		"altered state": func(dir string) error {
			return os.WriteFile(filepath.Join(dir, stateName), []byte("device statf"), 0o600)
		},
		"no manifest":      func(dir string) error { return os.Remove(filepath.Join(dir, manifestName)) },
		"garbled manifest": func(dir string) error { return os.WriteFile(filepath.Join(dir, manifestName), []byte("{"), 0o600) },
		"manifest of another": func(dir string) error {
			return os.WriteFile(filepath.Join(dir, manifestName), []byte(`{"version":1,"key":"00000000000000000000000000000000"}`), 0o600)
		},
	} {
		if _, err := s.Get(context.Background(), key, spec, fakeBoot(&calls)); err != nil {
			t.Fatal(err)
		}
		if err := breakIt(s.Dir(key)); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Open(key); err == nil {
			t.Errorf("%s: template still opens", name)
		}
		before := calls.Load()
		if _, err := s.Get(context.Background(), key, spec, fakeBoot(&calls)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if calls.Load() != before+1 {
			t.Errorf("%s: template not made again", name)
		}
	}
}

// A failed boot leaves no directory behind.
func TestFailedBootLeavesNothing(t *testing.T) {
	spec := testSpec(t)
	key, _ := Key(spec)
	s := Store{Root: t.TempDir()}
	boom := errors.New("guest did not come up")
	_, err := s.Get(context.Background(), key, spec, func(context.Context, *os.File, *os.File) error { return boom })
	if !errors.Is(err, boom) {
		t.Fatalf("Get: %v", err)
	}
	if _, err := os.Stat(s.Dir(key)); !os.IsNotExist(err) {
		t.Errorf("template directory left: %v", err)
	}
	ms, broken, err := s.List()
	if len(ms) != 0 || len(broken) != 0 || err != nil {
		t.Errorf("List: %v %v %v", ms, broken, err)
	}
}

// The key follows the content of the guest image, not only its path: a
// rebuilt initrd (a new agent) has a new key.
func TestKeyFollowsContent(t *testing.T) {
	spec := testSpec(t)
	a, err := Key(spec)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := Key(spec); a != b {
		t.Fatal("key is not stable")
	}
	if err := os.WriteFile(spec.Initrd, []byte("a newer agent"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, _ := Key(spec); a == b {
		t.Error("a new initrd has the old key")
	}
	spec.MemoryMiB++
	c, _ := Key(spec)
	spec.MemoryMiB--
	spec.KernelParams = []string{"x=1"}
	d, _ := Key(spec)
	if c == a || d == a || c == d {
		t.Error("memory size or kernel parameters do not change the key")
	}
	spec.Kernel = filepath.Join(t.TempDir(), "missing")
	if _, err := Key(spec); err == nil {
		t.Error("a missing kernel has a key")
	}
}

func TestRemove(t *testing.T) {
	spec := testSpec(t)
	key, _ := Key(spec)
	s := Store{Root: t.TempDir()}
	var calls atomic.Int32
	if _, err := s.Get(context.Background(), key, spec, fakeBoot(&calls)); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(s.Root); len(entries) != 0 {
		t.Errorf("left after Remove: %v", entries)
	}
	if err := s.Remove(context.Background(), "../etc"); err == nil {
		t.Error("Remove took a path for a key")
	}
}

// A template that cannot be made is not tried again by every sandbox (each
// attempt may last the agent's dial timeout); kasa template create does.
func TestFailedAttemptNotRetriedAtOnce(t *testing.T) {
	spec := testSpec(t)
	key, _ := Key(spec)
	s := Store{Root: t.TempDir()}
	var calls atomic.Int32
	failing := func(context.Context, *os.File, *os.File) error { calls.Add(1); return errors.New("no ready line") }
	for range 2 {
		if _, err := s.Get(context.Background(), key, spec, failing); err == nil {
			t.Fatal("Get succeeded")
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("%d attempts, want 1", n)
	}
	if _, err := s.Create(context.Background(), key, spec, fakeBoot(&calls)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(context.Background(), key, spec, failing); err != nil {
		t.Errorf("after a successful create: %v", err)
	}
}

// The directory keeps the newest MaxTemplates templates.
func TestPrune(t *testing.T) {
	spec := testSpec(t)
	s := Store{Root: t.TempDir()}
	var calls atomic.Int32
	var keys []string
	for i := range MaxTemplates + 2 {
		spec.MemoryMiB = uint32(4 + i)
		key, _ := Key(spec)
		keys = append(keys, key)
		if _, err := s.Get(context.Background(), key, spec, fakeBoot(&calls)); err != nil {
			t.Fatal(err)
		}
	}
	ms, _, _ := s.List()
	if len(ms) != MaxTemplates {
		t.Fatalf("%d templates kept, want %d", len(ms), MaxTemplates)
	}
	for _, gone := range keys[:2] {
		if _, err := s.Open(gone); err == nil {
			t.Errorf("old template %s kept", gone)
		}
	}
}

// A failure note past RetryFailedAfter goes, with its lock file, when the
// next template is made; a recent one stays (it still holds sandboxes back).
func TestPruneStaleFailureNotes(t *testing.T) {
	spec := testSpec(t)
	s := Store{Root: t.TempDir()}
	failing := func(context.Context, *os.File, *os.File) error { return errors.New("no ready line") }
	var failed []string
	for i := range 2 {
		spec.MemoryMiB = uint32(100 + i)
		key, _ := Key(spec)
		failed = append(failed, key)
		if _, err := s.Get(context.Background(), key, spec, failing); err == nil {
			t.Fatal("Get succeeded")
		}
	}
	old := time.Now().Add(-RetryFailedAfter - time.Minute)
	if err := os.Chtimes(s.Dir(failed[0])+failedSuffix, old, old); err != nil {
		t.Fatal(err)
	}
	spec.MemoryMiB = 4
	key, _ := Key(spec)
	var calls atomic.Int32
	if _, err := s.Get(context.Background(), key, spec, fakeBoot(&calls)); err != nil {
		t.Fatal(err)
	}
	for _, suffix := range []string{failedSuffix, lockSuffix} {
		if _, err := os.Stat(s.Dir(failed[0]) + suffix); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("stale %s kept: %v", suffix, err)
		}
	}
	if _, err := os.Stat(s.Dir(failed[1]) + failedSuffix); err != nil {
		t.Errorf("recent failure note removed: %v", err)
	}
}

// Remove unlinks the lock file while it holds it: a sandbox that was
// waiting on that file must not count as holding the lock, or it and a
// sandbox locking the path's new file would both make the template.
func TestLockSurvivesRemove(t *testing.T) {
	spec := testSpec(t)
	key, _ := Key(spec)
	s := Store{Root: t.TempDir()}
	unlock, err := s.lock(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan func(), 1)
	go func() {
		u, err := s.lock(context.Background(), key)
		if err != nil {
			t.Error(err)
		}
		got <- u
	}()
	time.Sleep(3 * lockPoll) // the waiter has the old file open
	os.Remove(s.Dir(key) + lockSuffix)
	// A newcomer locks the path's new file and keeps it.
	newcomer, err := s.lock(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	unlock() // the old file's lock is free now
	select {
	case u := <-got:
		u()
		t.Fatal("the waiter took the lock of a removed file while the newcomer held the path's")
	case <-time.After(5 * lockPoll):
	}
	newcomer()
	(<-got)()
}

// A clone's memory has the template's data where it was written, and holes
// for its zero pages.
func TestWriteNonZero(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "mem")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 5*4096+100)
	b[4096+7], b[4*4096], b[5*4096+99] = 1, 2, 3
	if err := writeNonZero(f, b, 4096); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(b))
	if _, err := f.ReadAt(got, 4096); err != nil {
		t.Fatal(err)
	}
	if string(got) != string(b) {
		t.Error("content differs")
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 > 4*4096 {
		t.Errorf("%d bytes allocated for 3 non-zero pages", st.Blocks*512)
	}
}

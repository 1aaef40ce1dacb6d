// Package template keeps Kasa's VM templates: one saved, paused VM per boot
// configuration (Key), under a directory of its own, made once under a
// lock, checked before each use, and copied into each clone's own memory.
package template

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/hypervisor"
)

// File names inside a template's directory.
const (
	memoryName   = "memory"
	stateName    = "state"
	manifestName = "manifest.json"
	lockSuffix   = ".lock"
	// failedSuffix marks a key whose template could not be made, with why.
	failedSuffix = ".failed"
)

const (
	manifestVersion = 1
	// maxManifest bounds the manifest read; a real one is a few hundred bytes.
	maxManifest = 64 << 10
	// maxState bounds the device state a template may have; QEMU's is
	// about 300 KiB for Kasa's machine.
	maxState = 64 << 20
	// lockPoll is how often a sandbox waiting for another's template retries
	// the lock.
	lockPoll = 50 * time.Millisecond
	// RetryFailedAfter is how long after a failed attempt sandboxes boot
	// cold instead of trying to make the template again: an attempt can
	// take as long as the agent's dial timeout.
	RetryFailedAfter = 5 * time.Minute
	// MaxTemplates is how many templates the directory keeps; making one
	// more removes the oldest (clones keep their own copies).
	MaxTemplates = 4
)

// ErrNotFound is returned (wrapped) when no valid template has the key.
var ErrNotFound = errors.New("template not found")

var keyPattern = regexp.MustCompile(`^[0-9a-f]{32}$`)

// Manifest describes a complete template; it is written last, atomically,
// so a template without one is unfinished or broken and never used.
type Manifest struct {
	Version     int       `json:"version"`
	Key         string    `json:"key"`
	Created     time.Time `json:"created"`
	Spec        Spec      `json:"spec"`
	MemoryBytes int64     `json:"memory_bytes"`
	StateBytes  int64     `json:"state_bytes"`
	StateSHA256 string    `json:"state_sha256"`
	// BootSeconds is how long the template's guest took to be ready.
	BootSeconds float64 `json:"boot_seconds"`
}

// Store is the directory of templates ([factory] template_path).
type Store struct{ Root string }

// Dir is the directory of the template with key.
func (s Store) Dir(key string) string { return filepath.Join(s.Root, key) }

// Boot makes a template: it boots a VM whose RAM is mem and saves its device
// state to state, and returns when the VM is gone.
type Boot func(ctx context.Context, mem, state *os.File) error

// Get returns the valid template of spec (key), making it with boot when
// there is none or it is broken. Concurrent callers, in any process, wait
// for one maker: exactly one template is made.
func (s Store) Get(ctx context.Context, key string, spec Spec, boot Boot) (*Manifest, error) {
	if m, err := s.Open(key); err == nil {
		return m, nil
	}
	unlock, err := s.lock(ctx, key)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if m, err := s.Open(key); err == nil {
		return m, nil // another sandbox made it while we waited
	}
	if b, err := os.ReadFile(s.Dir(key) + failedSuffix); err == nil {
		if fi, err := os.Stat(s.Dir(key) + failedSuffix); err == nil && time.Since(fi.ModTime()) < RetryFailedAfter {
			return nil, fmt.Errorf("template %s could not be made %s ago, not retried before %s: %s",
				key, time.Since(fi.ModTime()).Round(time.Second), RetryFailedAfter, bytes.TrimSpace(b[:min(len(b), 2048)]))
		}
	}
	m, err := s.create(ctx, key, spec, boot)
	if err != nil && ctx.Err() == nil {
		_ = os.WriteFile(s.Dir(key)+failedSuffix, []byte(err.Error()+"\n"), 0o600)
	}
	return m, err
}

// Create makes the template of spec afresh, replacing any.
func (s Store) Create(ctx context.Context, key string, spec Spec, boot Boot) (*Manifest, error) {
	unlock, err := s.lock(ctx, key)
	if err != nil {
		return nil, err
	}
	defer unlock()
	return s.create(ctx, key, spec, boot)
}

func (s Store) create(ctx context.Context, key string, spec Spec, boot Boot) (_ *Manifest, retErr error) {
	dir := s.Dir(key)
	os.Remove(dir + failedSuffix)
	s.prune(ctx, key)
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("template %s: removing the old one: %w", key, err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("template %s: %w", key, err)
	}
	defer func() {
		if retErr != nil {
			os.RemoveAll(dir)
		}
	}()
	size := int64(spec.MemoryMiB) << 20
	mem, err := os.OpenFile(filepath.Join(dir, memoryName), os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("template %s: %w", key, err)
	}
	defer mem.Close()
	if err := mem.Truncate(size); err != nil {
		return nil, fmt.Errorf("template %s: sizing its memory: %w", key, err)
	}
	state, err := os.OpenFile(filepath.Join(dir, stateName), os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("template %s: %w", key, err)
	}
	defer state.Close()
	start := time.Now()
	if err := boot(ctx, mem, state); err != nil {
		return nil, fmt.Errorf("template %s: %w", key, err)
	}
	// The VMM may have been given the files; they are the runtime's again.
	for _, f := range []*os.File{mem, state} {
		if err := f.Chown(0, 0); err != nil {
			return nil, fmt.Errorf("template %s: %w", key, err)
		}
	}
	m := &Manifest{Version: manifestVersion, Key: key, Created: time.Now().UTC(), Spec: spec, MemoryBytes: size,
		BootSeconds: time.Since(start).Seconds()}
	if m.StateBytes, m.StateSHA256, err = hashFile(filepath.Join(dir, stateName)); err != nil {
		return nil, fmt.Errorf("template %s: %w", key, err)
	}
	if m.StateBytes == 0 {
		return nil, fmt.Errorf("template %s: the hypervisor saved no device state", key)
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	tmp := filepath.Join(dir, manifestName+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return nil, fmt.Errorf("template %s: %w", key, err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, manifestName)); err != nil {
		return nil, fmt.Errorf("template %s: %w", key, err)
	}
	return m, nil
}

// Open returns the manifest of the template with key if the template is
// complete and intact: manifest, memory of the recorded size, device state
// of the recorded size and hash. Otherwise the error says what is wrong.
func (s Store) Open(key string) (*Manifest, error) {
	if !keyPattern.MatchString(key) {
		return nil, fmt.Errorf("template key %q: want 32 hexadecimal digits", key)
	}
	dir := s.Dir(key)
	f, err := os.Open(filepath.Join(dir, manifestName))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("template %s: %w", key, ErrNotFound)
		}
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(f, maxManifest+1))
	f.Close()
	if err != nil {
		return nil, err
	}
	var m Manifest
	if len(b) > maxManifest {
		return nil, fmt.Errorf("template %s: manifest larger than %d bytes", key, maxManifest)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("template %s: manifest: %w", key, err)
	}
	if m.Version != manifestVersion || m.Key != key {
		return nil, fmt.Errorf("template %s: manifest is version %d of key %q, want version %d", key, m.Version, m.Key, manifestVersion)
	}
	if fi, err := os.Stat(filepath.Join(dir, memoryName)); err != nil || fi.Size() != m.MemoryBytes {
		return nil, fmt.Errorf("template %s: memory file is not the %d bytes the manifest records (%v)", key, m.MemoryBytes, err)
	}
	n, sum, err := hashFile(filepath.Join(dir, stateName))
	if err != nil || n != m.StateBytes || sum != m.StateSHA256 {
		return nil, fmt.Errorf("template %s: device state does not match the manifest (%d bytes; %v)", key, n, err)
	}
	return &m, nil
}

// prune removes the oldest templates other than keep, so that the directory
// holds at most MaxTemplates once keep is made. A template being made or
// removed by someone else (locked) is left alone.
func (s Store) prune(ctx context.Context, keep string) {
	ms, broken, err := s.List()
	if err != nil {
		return
	}
	var old []string
	for _, k := range broken {
		if k != keep {
			old = append(old, k)
		}
	}
	for _, m := range ms { // oldest first
		if m.Key != keep {
			old = append(old, m.Key)
		}
	}
	// A failure note past RetryFailedAfter no longer holds anything back;
	// its key (and lock file) would otherwise stay until the host reboots.
	notes, _ := filepath.Glob(filepath.Join(s.Root, "*"+failedSuffix))
	for _, n := range notes {
		k := strings.TrimSuffix(filepath.Base(n), failedSuffix)
		if fi, err := os.Stat(n); err == nil && k != keep && keyPattern.MatchString(k) && time.Since(fi.ModTime()) >= RetryFailedAfter {
			if _, err := os.Stat(s.Dir(k)); errors.Is(err, fs.ErrNotExist) {
				rctx, cancel := context.WithTimeout(ctx, 2*lockPoll)
				_ = s.Remove(rctx, k)
				cancel()
			}
		}
	}
	for len(old) > MaxTemplates-1 {
		k := old[0]
		old = old[1:]
		rctx, cancel := context.WithTimeout(ctx, 2*lockPoll)
		_ = s.Remove(rctx, k)
		cancel()
	}
}

// List returns the manifests of the valid templates, and the keys of
// directories that are not (unfinished or broken).
func (s Store) List() ([]Manifest, []string, error) {
	entries, err := os.ReadDir(s.Root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	var out []Manifest
	var broken []string
	for _, e := range entries {
		if !e.IsDir() || !keyPattern.MatchString(e.Name()) {
			continue
		}
		if m, err := s.Open(e.Name()); err == nil {
			out = append(out, *m)
		} else {
			broken = append(broken, e.Name())
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, broken, nil
}

// Remove deletes the template with key, waiting for anyone making it.
// Clones already started keep their own copy of its memory.
func (s Store) Remove(ctx context.Context, key string) error {
	if !keyPattern.MatchString(key) {
		return fmt.Errorf("template key %q: want 32 hexadecimal digits", key)
	}
	unlock, err := s.lock(ctx, key)
	if err != nil {
		return err
	}
	defer unlock()
	if err := os.RemoveAll(s.Dir(key)); err != nil {
		return err
	}
	os.Remove(s.Dir(key) + failedSuffix)
	return os.Remove(s.Dir(key) + lockSuffix)
}

// lock takes the template's lock file (flock, so a dead holder releases
// it), waiting until ctx ends. Remove unlinks the lock file while holding
// it; whoever was waiting on that file then holds a lock nobody else can
// see, so a lock taken on a file that is no longer at its path is dropped
// and taken again on the path's new file.
func (s Store) lock(ctx context.Context, key string) (func(), error) {
	if err := os.MkdirAll(s.Root, 0o700); err != nil {
		return nil, fmt.Errorf("template directory: %w", err)
	}
	path := s.Dir(key) + lockSuffix
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, fmt.Errorf("template %s: lock: %w", key, err)
		}
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			if sameFile(f, path) {
				return func() { f.Close() }, nil
			}
			f.Close()
			continue
		}
		f.Close()
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("template %s: lock: %w", key, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("template %s: waiting for another sandbox to make it: %w", key, ctx.Err())
		case <-time.After(lockPoll):
		}
	}
}

// sameFile reports whether the open f is still the file at path.
func sameFile(f *os.File, path string) bool {
	var open, named unix.Stat_t
	if unix.Fstat(int(f.Fd()), &open) != nil || unix.Stat(path, &named) != nil {
		return false
	}
	return open.Dev == named.Dev && open.Ino == named.Ino
}

// Clone returns a clone's snapshot of the template: its own copy of the
// template's memory (only the pages the template wrote) in a memfd, and the
// template's device state.
func (s Store) Clone(m *Manifest) (_ *hypervisor.Snapshot, retErr error) {
	dir := s.Dir(m.Key)
	src, err := os.Open(filepath.Join(dir, memoryName))
	if err != nil {
		return nil, fmt.Errorf("template %s: %w", m.Key, err)
	}
	defer src.Close()
	fd, err := unix.MemfdCreate("kasa-clone-memory", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("template %s: memory for a clone: %w", m.Key, err)
	}
	mem := os.NewFile(uintptr(fd), "kasa-clone-memory")
	defer func() {
		if retErr != nil {
			mem.Close()
		}
	}()
	if err := mem.Truncate(m.MemoryBytes); err != nil {
		return nil, fmt.Errorf("template %s: memory for a clone: %w", m.Key, err)
	}
	if err := copyData(mem, src, m.MemoryBytes); err != nil {
		return nil, fmt.Errorf("template %s: copying its memory: %w", m.Key, err)
	}
	state, err := os.Open(filepath.Join(dir, stateName))
	if err != nil {
		return nil, fmt.Errorf("template %s: %w", m.Key, err)
	}
	// The template's agent waits for this line before it looks for the
	// clone's devices (agent/internal/restore).
	return &hypervisor.Snapshot{Role: hypervisor.SnapshotClone, Memory: mem, State: state,
		ConsoleInput: []byte(api.CloneKickLine + "\n")}, nil
}

// copyData copies the data extents of src (SEEK_DATA/SEEK_HOLE) into dst at
// the same offsets; the holes stay holes, and so do pages of zeros (the
// guest wrote and freed them): a zero page costs the clone nothing until
// its guest writes it.
func copyData(dst, src *os.File, size int64) error {
	buf := make([]byte, 1<<20)
	sfd := int(src.Fd())
	for off := int64(0); off < size; {
		start, err := unix.Seek(sfd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // no data after off
		}
		if err != nil {
			return err
		}
		end, err := unix.Seek(sfd, start, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		if end > size {
			end = size
		}
		for p := start; p < end; {
			n := min(int64(len(buf)), end-p)
			if _, err := src.ReadAt(buf[:n], p); err != nil {
				return err
			}
			if err := writeNonZero(dst, buf[:n], p); err != nil {
				return err
			}
			p += n
		}
		off = end
	}
	return nil
}

// writeNonZero writes b at off, leaving out the 4 KiB pages that are all zero.
func writeNonZero(dst *os.File, b []byte, off int64) error {
	const page = 4096
	for start := 0; start < len(b); {
		for start < len(b) && isZero(b[start:min(start+page, len(b))]) {
			start += page
		}
		end := start
		for end < len(b) && !isZero(b[end:min(end+page, len(b))]) {
			end += page
		}
		end = min(end, len(b))
		if start < end {
			if _, err := dst.WriteAt(b[start:end], off+int64(start)); err != nil {
				return err
			}
		}
		start = end
	}
	return nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func hashFile(path string) (int64, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, maxState+1))
	if err != nil {
		return n, "", err
	}
	if n > maxState {
		return n, "", fmt.Errorf("%s is larger than %d bytes", path, maxState)
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

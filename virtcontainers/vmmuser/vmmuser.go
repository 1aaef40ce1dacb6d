// Package vmmuser hands out the unprivileged identities that confined
// hypervisors run as: one uid (and the gid of the same number) per sandbox,
// from a reserved range, so that one sandbox's VMM can neither signal,
// ptrace nor read the files of another's.
//
// The identities need no /etc/passwd entry. Each one in use is a file
// Dir/<uid> holding the sandbox id, created exclusively, so concurrent shims
// never share one and a restarted shim finds what it had.
package vmmuser

import (
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

const (
	// Base is the first uid of the range: systemd documents
	// 1879048192..2147483647 (0x70000000..0x7fffffff) as unused by the
	// system, by containers and by dynamic users, and it stays below 2^31,
	// which some tools mishandle.
	Base uint32 = 0x70000000
	// Count is the size of the range: more sandboxes than any host runs.
	Count uint32 = 65536
)

// Dir records the identities in use; on /run, so a reboot frees them all.
var Dir = "/run/kasa/vmm-uid"

// Allocate returns the uid (= gid) for sandboxID's VMM: the one it already
// has, or a free one. The probe starts at a hash of the id, so a burst of
// shims rarely contends for the same file.
func Allocate(sandboxID string) (uint32, error) {
	if sandboxID == "" || strings.ContainsAny(sandboxID, "/\x00\n") {
		return 0, fmt.Errorf("vmm uid: bad sandbox id %q", sandboxID)
	}
	if err := os.MkdirAll(Dir, 0o700); err != nil {
		return 0, fmt.Errorf("vmm uid: %w", err)
	}
	h := fnv.New32a()
	h.Write([]byte(sandboxID))
	start := h.Sum32() % Count
	for i := uint32(0); i < Count; i++ {
		uid := Base + (start+i)%Count
		path := filepath.Join(Dir, strconv.FormatUint(uint64(uid), 10))
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil {
			_, werr := f.WriteString(sandboxID)
			if cerr := f.Close(); werr == nil {
				werr = cerr
			}
			if werr != nil {
				os.Remove(path)
				return 0, fmt.Errorf("vmm uid: %w", werr)
			}
			return uid, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return 0, fmt.Errorf("vmm uid: %w", err)
		}
		if owner, _ := os.ReadFile(path); string(owner) == sandboxID {
			return uid, nil
		}
	}
	return 0, fmt.Errorf("vmm uid: all %d identities from %d are in use", Count, Base)
}

// Release frees uid if sandboxID holds it. Releasing what is not held (or
// 0) is not an error, so cleanup can run more than once.
func Release(uid uint32, sandboxID string) error {
	if uid == 0 {
		return nil
	}
	path := filepath.Join(Dir, strconv.FormatUint(uint64(uid), 10))
	owner, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("vmm uid %d: %w", uid, err)
	}
	if string(owner) != sandboxID {
		return nil // someone else's now
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("vmm uid %d: %w", uid, err)
	}
	return nil
}

// Lookup returns the uid sandboxID holds, or 0: a shim that finds no state
// of a dead sandbox can still find (and kill, and free) its VMM's identity.
func Lookup(sandboxID string) uint32 {
	entries, _ := os.ReadDir(Dir)
	for _, e := range entries {
		uid, err := strconv.ParseUint(e.Name(), 10, 32)
		if err != nil {
			continue
		}
		if owner, _ := os.ReadFile(filepath.Join(Dir, e.Name())); string(owner) == sandboxID {
			return uint32(uid)
		}
	}
	return 0
}

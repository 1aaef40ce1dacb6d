// Package vmmuser hands out the unprivileged identities that confined
// hypervisors and their daemons run as: one uid (and the gid of the same
// number) per sandbox for the VMM, and one range of 65536 ids per sandbox
// for a virtiofsd in a user namespace of its own, all from a reserved
// range, so that one sandbox's processes can neither signal, ptrace nor
// read the files of another's.
//
// The identities need no /etc/passwd entry. Each one in use is a file
// <dir>/<first id> holding the sandbox id, created exclusively, so
// concurrent shims never share one and a restarted shim finds what it had.
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
	// Count is the number of VMM uids, Base..Base+Count-1: more sandboxes
	// than any host runs.
	Count uint32 = 65536
)

// Dir records the VMM uids in use; on /run, so a reboot frees them all.
var Dir = "/run/kasa/vmm-uid"

// pool is a set of equal blocks of ids, each lent to one sandbox at a time.
type pool struct {
	name  string
	dir   *string
	first uint32 // the first id of block 0
	size  uint32 // ids per block
	count uint32 // blocks
}

// vmmUIDs are the VMM uids: blocks of one.
var vmmUIDs = pool{name: "vmm uid", dir: &Dir, first: Base, size: 1, count: Count}

// Allocate returns the uid (= gid) for sandboxID's VMM: the one it already
// has, or a free one.
func Allocate(sandboxID string) (uint32, error) { return vmmUIDs.allocate(sandboxID) }

// Release frees uid if sandboxID holds it. Releasing what is not held (or
// 0) is not an error, so cleanup can run more than once.
func Release(uid uint32, sandboxID string) error { return vmmUIDs.release(uid, sandboxID) }

// Lookup returns the uid sandboxID holds, or 0: a shim that finds no state
// of a dead sandbox can still find (and kill, and free) its VMM's identity.
func Lookup(sandboxID string) uint32 { return vmmUIDs.lookup(sandboxID) }

// allocate returns the first id of sandboxID's block: the one it already
// has, or a free one. The probe starts at a hash of the id, so a burst of
// shims rarely contends for the same file.
func (p pool) allocate(sandboxID string) (uint32, error) {
	if sandboxID == "" || strings.ContainsAny(sandboxID, "/\x00\n") {
		return 0, fmt.Errorf("%s: bad sandbox id %q", p.name, sandboxID)
	}
	if err := os.MkdirAll(*p.dir, 0o700); err != nil {
		return 0, fmt.Errorf("%s: %w", p.name, err)
	}
	h := fnv.New32a()
	h.Write([]byte(sandboxID))
	start := h.Sum32() % p.count
	for i := uint32(0); i < p.count; i++ {
		id := p.first + (start+i)%p.count*p.size
		path := filepath.Join(*p.dir, strconv.FormatUint(uint64(id), 10))
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil {
			_, werr := f.WriteString(sandboxID)
			if cerr := f.Close(); werr == nil {
				werr = cerr
			}
			if werr != nil {
				os.Remove(path)
				return 0, fmt.Errorf("%s: %w", p.name, werr)
			}
			return id, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return 0, fmt.Errorf("%s: %w", p.name, err)
		}
		if owner, _ := os.ReadFile(path); string(owner) == sandboxID {
			return id, nil
		}
	}
	return 0, fmt.Errorf("%s: all %d blocks from %d are in use", p.name, p.count, p.first)
}

func (p pool) release(id uint32, sandboxID string) error {
	if id == 0 {
		return nil
	}
	path := filepath.Join(*p.dir, strconv.FormatUint(uint64(id), 10))
	owner, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s %d: %w", p.name, id, err)
	}
	if string(owner) != sandboxID {
		return nil // someone else's now
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s %d: %w", p.name, id, err)
	}
	return nil
}

func (p pool) lookup(sandboxID string) uint32 {
	entries, _ := os.ReadDir(*p.dir)
	for _, e := range entries {
		id, err := strconv.ParseUint(e.Name(), 10, 32)
		if err != nil {
			continue
		}
		if owner, _ := os.ReadFile(filepath.Join(*p.dir, e.Name())); string(owner) == sandboxID {
			return uint32(id)
		}
	}
	return 0
}

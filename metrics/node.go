package metrics

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"
)

// NodeRoot holds the node's counters (docs/architecture.md, "Contracts"):
// one small file per counter that every shim adds to under a lock, so that
// a start that failed is counted although its shim is gone by the time
// `kasa monitor` is scraped. On /run, they count since the node's boot.
var NodeRoot = "/run/kasa/metrics"

const (
	startsFile       = "sandbox_starts"
	failuresFilePref = "sandbox_start_failures."
	// counterWidth is every counter file's length: 20 digits and a newline,
	// rewritten in place at once.
	counterWidth = 21
)

// RecordStart counts a sandbox start that succeeded.
func RecordStart() error { return addCounter(NodeRoot, startsFile) }

// RecordStartFailure counts a sandbox start that failed for reason, one of
// FailureReasons (anything else counts as ReasonOther).
func RecordStartFailure(reason string) error {
	if !slices.Contains(FailureReasons, reason) {
		reason = ReasonOther
	}
	return addCounter(NodeRoot, failuresFilePref+reason)
}

func addCounter(root, name string) error {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(root, name), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	n, err := readCounter(f)
	if err != nil {
		return err
	}
	_, err = f.WriteAt([]byte(fmt.Sprintf("%020d\n", n+1)), 0)
	return err // closing the file releases the lock
}

func readCounter(f *os.File) (uint64, error) {
	buf := make([]byte, counterWidth+1)
	n, _ := f.ReadAt(buf, 0)
	s := bytes.TrimSpace(buf[:n])
	if len(s) == 0 {
		return 0, nil
	}
	v, err := strconv.ParseUint(string(s), 10, 64)
	if err != nil || n > counterWidth {
		return 0, fmt.Errorf("counter %s is corrupt (%q)", f.Name(), buf[:n])
	}
	return v, nil
}

// nodeCounters reads the counters under root; a missing file is zero.
func nodeCounters(root string) (starts uint64, failures map[string]uint64, err error) {
	read := func(name string) (uint64, error) {
		f, err := os.Open(filepath.Join(root, name))
		if os.IsNotExist(err) {
			return 0, nil
		}
		if err != nil {
			return 0, err
		}
		defer f.Close()
		return readCounter(f)
	}
	if starts, err = read(startsFile); err != nil {
		return 0, nil, err
	}
	failures = map[string]uint64{}
	for _, r := range FailureReasons {
		if failures[r], err = read(failuresFilePref + r); err != nil {
			return 0, nil, err
		}
	}
	return starts, failures, nil
}

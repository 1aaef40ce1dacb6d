package metrics

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/virtcontainers"
)

// NodeRoot holds the node's counters (docs/architecture.md, "Contracts"):
// one small file per counter that every shim adds to under a lock, so that
// a start that failed is counted although its shim is gone by the time
// `kasa monitor` is scraped. On /run, they count since the node's boot.
var NodeRoot = "/run/kasa/metrics"

const (
	// startsFilePref+start counts the starts of one kind (StartLabels);
	// legacyStartsFile is what shims counted before the kinds, served as
	// StartUnknown.
	startsFilePref   = "sandbox_starts."
	legacyStartsFile = "sandbox_starts"
	failuresFilePref = "sandbox_start_failures."
	// counterWidth is every counter file's length: 20 digits and a newline,
	// rewritten in place at once.
	counterWidth = 21
)

// RecordStart counts a sandbox start that succeeded, by how its VM
// started (the BootRecord's VMStart); anything but cold or template
// counts as StartUnknown.
func RecordStart(start virtcontainers.VMStart) error {
	if !slices.Contains(StartLabels, string(start)) {
		return addCounter(NodeRoot, legacyStartsFile)
	}
	return addCounter(NodeRoot, startsFilePref+string(start))
}

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
// starts is by StartLabels, with StartUnknown only when it is not zero.
func nodeCounters(root string) (starts, failures map[string]uint64, err error) {
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
	starts = map[string]uint64{}
	for _, s := range StartLabels {
		if starts[s], err = read(startsFilePref + s); err != nil {
			return nil, nil, err
		}
	}
	if n, err := read(legacyStartsFile); err != nil {
		return nil, nil, err
	} else if n > 0 {
		starts[StartUnknown] = n
	}
	failures = map[string]uint64{}
	for _, r := range FailureReasons {
		if failures[r], err = read(failuresFilePref + r); err != nil {
			return nil, nil, err
		}
	}
	return starts, failures, nil
}

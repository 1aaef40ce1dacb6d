package container

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The init of a PID namespace gets only the signals it handles: a SIGTERM
// sent before the container's PID 1 has installed its handler is dropped by
// the kernel, and the stop then waits its whole grace period for SIGKILL.
// runc has the same rule, but on a fast host the window between start and
// the handler is milliseconds; in a VM under software emulation it is
// seconds (`sh -c top` stopped right after it started: 5 of 6 stops hit it).
// So a catchable signal for a running container's PID 1 is held until the
// process catches it, for at most handlerWait, and then sent in any case,
// where the kernel decides as it would have.
const (
	handlerWait = 3 * time.Second
	handlerPoll = 10 * time.Millisecond
)

// awaitHandler returns once pid catches or ignores sig, is not the init of
// its PID namespace, is gone, or wait has passed.
func awaitHandler(ctx context.Context, pid int, sig unix.Signal, wait time.Duration) {
	if sig == 0 || sig == unix.SIGKILL || sig == unix.SIGSTOP {
		return
	}
	deadline := time.Now().Add(wait)
	for {
		st, err := readSigStatus(pid)
		if err != nil || !st.nsInit || st.handles(sig) || time.Now().After(deadline) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(handlerPoll):
		}
	}
}

// sigStatus is what /proc/<pid>/status says of a process's signals.
type sigStatus struct {
	nsInit          bool // PID 1 of its innermost PID namespace
	caught, ignored uint64
}

// handles reports whether the process catches or ignores sig.
func (s sigStatus) handles(sig unix.Signal) bool {
	bit := uint64(1) << (uint(sig) - 1)
	return (s.caught|s.ignored)&bit != 0
}

func readSigStatus(pid int) (sigStatus, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return sigStatus{}, err
	}
	return parseSigStatus(b)
}

func parseSigStatus(b []byte) (sigStatus, error) {
	var st sigStatus
	var seen int
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		var err error
		switch key {
		case "NSpid":
			f := strings.Fields(value)
			st.nsInit = len(f) > 0 && f[len(f)-1] == "1"
			seen++
		case "SigCgt":
			st.caught, err = strconv.ParseUint(value, 16, 64)
			seen++
		case "SigIgn":
			st.ignored, err = strconv.ParseUint(value, 16, 64)
			seen++
		}
		if err != nil {
			return sigStatus{}, fmt.Errorf("%s: %w", key, err)
		}
	}
	if seen != 3 {
		return sigStatus{}, fmt.Errorf("status lacks NSpid, SigCgt or SigIgn")
	}
	return st, nil
}

package container

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math"
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
// The same holds while PID 1 is still libcontainer's init (this binary,
// re-executed), which has yet to exec the container's program: the Go
// runtime there catches every signal, but the execve that follows resets
// the handlers and a signal still pending then is dropped.
// So a catchable signal for a running container's PID 1 is held until the
// process runs its own program and catches it, while the process is younger than handlerWindow, and
// then sent in any case, where the kernel decides as it would have. A PID 1
// that has run longer than that without a handler is signalled at once.
// handlerWindow is counted from the process's start, not from the signal,
// so it bounds the wait on a slow guest (under load, a shell took 4 s to
// reach its trap) without delaying the signals of settled processes.
const (
	handlerWindow = 15 * time.Second
	handlerPoll   = 10 * time.Millisecond
)

// awaitHandler returns once pid catches or ignores sig, is not the init of
// its PID namespace, is gone, or has been running for window.
func awaitHandler(ctx context.Context, pid int, sig unix.Signal, window time.Duration) {
	if sig == 0 || sig == unix.SIGKILL || sig == unix.SIGSTOP {
		return
	}
	age, err := processAge(pid)
	if err != nil {
		return
	}
	deadline := time.Now().Add(window - age)
	for {
		st, err := readSigStatus(pid)
		if err != nil || !st.nsInit || (st.handles(sig) && !inLibcontainerInit(pid)) || time.Now().After(deadline) {
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

// inLibcontainerInit reports whether pid is still libcontainer's init, not
// yet the container's program: it runs this binary (or libcontainer's
// sealed copy of it, which nsexec names "runc:[2:INIT]").
func inLibcontainerInit(pid int) bool {
	proc := "/proc/" + strconv.Itoa(pid)
	if comm, err := os.ReadFile(proc + "/comm"); err == nil && strings.HasPrefix(string(comm), "runc:[") {
		return true
	}
	self, err := os.Stat("/proc/self/exe")
	if err != nil {
		return false
	}
	exe, err := os.Stat(proc + "/exe")
	return err == nil && os.SameFile(self, exe)
}

// processAge is how long pid has existed, from its start time in
// /proc/<pid>/stat and the system's uptime.
func processAge(pid int) (time.Duration, error) {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	uptime, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0, err
	}
	return parseProcessAge(stat, uptime, 100) // USER_HZ is 100 on Linux
}

// parseProcessAge computes the age from a stat line (starttime is field
// 22, counted after the parenthesised command name, which may hold spaces)
// and /proc/uptime's first number.
func parseProcessAge(stat, uptime []byte, hz int) (time.Duration, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("stat: no command name")
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 20 {
		return 0, fmt.Errorf("stat: %d fields after the name", len(f))
	}
	start, err := strconv.ParseUint(f[19], 10, 64) // field 22
	if err != nil {
		return 0, fmt.Errorf("stat starttime: %w", err)
	}
	up := strings.Fields(string(uptime))
	if len(up) == 0 {
		return 0, fmt.Errorf("uptime: empty")
	}
	secs, err := strconv.ParseFloat(up[0], 64)
	if err != nil {
		return 0, fmt.Errorf("uptime: %w", err)
	}
	ticks := int64(math.Round(secs*float64(hz))) - int64(start)
	return max(time.Duration(ticks)*time.Second/time.Duration(hz), 0), nil
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

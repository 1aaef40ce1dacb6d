package virtcontainers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// A sandbox's owner is the process that made it (the shim): its pid and
// its start time, so that a recycled pid is not taken for it.

// procStartTime is the start time of process pid in clock ticks since boot
// (field 22 of /proc/<pid>/stat), or 0 if there is no such process.
func procStartTime(pid int) uint64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name may hold spaces and parentheses: fields start after
	// the last ')'. State is field 3, start time field 22.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return 0
	}
	t, _ := strconv.ParseUint(f[19], 10, 64)
	return t
}

// ownerGone reports whether the state's owner process is known to have
// ended. A state with no owner recorded is never taken as orphaned.
func ownerGone(st *sandboxState) bool {
	if st.OwnerPID <= 0 || st.OwnerPIDNS != pidNamespace() {
		return false // unknown, or a pid of another pid namespace
	}
	start := procStartTime(st.OwnerPID)
	return start == 0 || start != st.OwnerStart
}

// pidNamespace names this process's pid namespace (its /proc link).
func pidNamespace() string {
	ns, _ := os.Readlink("/proc/self/ns/pid")
	return ns
}

// HasState reports whether sandbox id still has persisted state, i.e.
// whether its owner has not removed it yet.
func HasState(id string) bool {
	if validID(id) != nil {
		return false
	}
	_, err := os.Stat(filepath.Join(stateDir(id), "state.json"))
	return err == nil
}

// ReapOrphans cleans up every sandbox whose owner (a shim) died without
// doing it: the next shim, or a `kasa` command, sees what a dead shim
// left even when nothing ran its `shim delete` (CRI-O never does). It
// returns the ids it cleaned up.
func ReapOrphans(ctx context.Context) ([]string, error) {
	entries, err := os.ReadDir(SandboxStateRoot)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	var reaped []string
	var errs []error
	for _, e := range entries {
		if !e.IsDir() || validID(e.Name()) != nil {
			continue
		}
		st, err := loadState(e.Name())
		if err != nil || !ownerGone(st) {
			continue
		}
		log.G(ctx).WithField("sandbox", st.ID).WithField("owner_pid", st.OwnerPID).Warn("the sandbox's shim died without cleaning up: reaping what it left")
		if err := CleanupSandbox(ctx, st.ID); err != nil {
			errs = append(errs, err)
			continue
		}
		reaped = append(reaped, st.ID)
	}
	return reaped, errors.Join(errs...)
}

// lockCleanups serialises cleanups on this host: a dead shim's reaper, a
// `shim delete` and the next shim's ReapOrphans may all see the same
// leftovers at once. The lock is the state root directory's flock.
func lockCleanups() (unlock func(), err error) {
	if err := os.MkdirAll(SandboxStateRoot, 0o700); err != nil {
		return nil, err
	}
	fd, err := unix.Open(SandboxStateRoot, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", SandboxStateRoot, err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("lock %s: %w", SandboxStateRoot, err)
	}
	return func() { unix.Close(fd) }, nil
}

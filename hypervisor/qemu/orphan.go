package qemu

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// KillOrphan ends the QEMU of VM id that a dead owner left running, found
// through the pid file in its state directory, and removes that directory.
// The pid is only signalled if its command line names the VM, so a recycled
// pid is never hit. A missing pid file or process is not an error.
func KillOrphan(stateDir, id string) error {
	pid, err := readPID(PathsFor(stateDir).PIDFile)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if pid > 0 && isOurQEMU(pid, id) {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("kill orphaned QEMU %d: %w", pid, err)
		}
		deadline := time.Now().Add(killWait)
		for isOurQEMU(pid, id) {
			if time.Now().After(deadline) {
				return fmt.Errorf("orphaned QEMU %d of %s did not die", pid, id)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if err := os.RemoveAll(stateDir); err != nil {
		return fmt.Errorf("remove VM state: %w", err)
	}
	return nil
}

func readPID(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pid file %s: bad content %q", path, b)
	}
	return pid, nil
}

// isOurQEMU reports whether pid is alive (not a zombie) and runs VM id.
func isOurQEMU(pid int, id string) bool {
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || len(cmdline) == 0 { // gone, or a zombie
		return false
	}
	return bytes.Contains(cmdline, []byte("sandbox-"+optValue(id)+",")) || bytes.HasSuffix(cmdline, []byte("sandbox-"+id+"\x00"))
}

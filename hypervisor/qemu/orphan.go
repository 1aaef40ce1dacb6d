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
//
// vmmUID, when not 0, is the unprivileged identity the VM's QEMU ran as
// (Confinement.UID), which belongs to this VM alone: every process of that
// uid is killed too. A QEMU that a guest took over can rewrite its own
// command line, but not its uid.
func KillOrphan(stateDir, id string, vmmUID uint32) error {
	pid, err := readPID(PathsFor(stateDir).PIDFile)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if vmmUID != 0 {
		if err := killUID(vmmUID); err != nil {
			return err
		}
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

// killUID SIGKILLs every process whose real or effective uid is uid and waits
// until none is left.
func killUID(uid uint32) error {
	deadline := time.Now().Add(killWait)
	for {
		pids := pidsOfUID(uid)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v of VMM uid %d did not die", pids, uid)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pidsOfUID lists the live (non-zombie) processes running as uid.
func pidsOfUID(uid uint32) []int {
	entries, _ := os.ReadDir("/proc")
	want := strconv.FormatUint(uint64(uid), 10)
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue
		}
		var zombie, match bool
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 3 {
				switch f[0] {
				case "State:":
					zombie = f[1] == "Z" || f[1] == "X"
				case "Uid:":
					match = f[1] == want || f[2] == want
				}
			}
		}
		if match && !zombie {
			pids = append(pids, pid)
		}
	}
	return pids
}

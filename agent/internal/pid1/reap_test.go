package pid1

import (
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The reaper hands a registered child's status to its owner, never steals
// one that os/exec waits for inside Spawn, and reaps everything else.
func TestReaper(t *testing.T) {
	r, err := StartReaper()
	if err != nil {
		t.Fatal(err)
	}

	type exit struct {
		ws unix.WaitStatus
		at time.Time
	}
	got := make(chan exit, 1)
	var pid int
	err = r.Spawn(func() (int, error) {
		cmd := exec.Command("sh", "-c", "exit 3")
		if err := cmd.Start(); err != nil {
			return 0, err
		}
		pid = cmd.Process.Pid
		time.Sleep(50 * time.Millisecond) // it exits while reaping is suspended
		return pid, nil
	}, func(ws unix.WaitStatus, at time.Time) { got <- exit{ws, at} })
	if err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-got:
		if !e.ws.Exited() || e.ws.ExitStatus() != 3 || e.at.IsZero() {
			t.Fatalf("status %v at %v, want exit 3", e.ws, e.at)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("registered exit never reported")
	}

	// os/exec's own wait inside Spawn keeps its status.
	for i := 0; i < 20; i++ {
		err := r.Spawn(func() (int, error) {
			return 0, exec.Command("sh", "-c", "exit 5").Run()
		}, nil)
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 5 {
			t.Fatalf("run %d: %v, want exit status 5", i, err)
		}
	}

	// An unregistered child is reaped, not left a zombie.
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		// WNOWAIT: look without reaping it ourselves.
		var info unix.Siginfo
		if err := unix.Waitid(unix.P_PID, cmd.Process.Pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil); err == unix.ECHILD {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("unregistered child not reaped")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

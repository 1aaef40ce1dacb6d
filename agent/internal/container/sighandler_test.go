package container

import (
	"context"
	"os"
	"os/exec"
	"os/signal"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseSigStatus(t *testing.T) {
	status := "Name:\ttop\nNSpid:\t812\t1\nSigQ:\t0/3\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000004\nSigCgt:\t0000000000004002\n"
	st, err := parseSigStatus([]byte(status))
	if err != nil {
		t.Fatal(err)
	}
	if !st.nsInit {
		t.Error("NSpid ending in 1 is a namespace init")
	}
	for sig, want := range map[unix.Signal]bool{unix.SIGTERM: true, unix.SIGINT: true, unix.SIGQUIT: true, unix.SIGHUP: false, unix.SIGUSR1: false} {
		if got := st.handles(sig); got != want {
			t.Errorf("handles(%v) = %v, want %v", sig, got, want)
		}
	}
	if st, _ := parseSigStatus([]byte("NSpid:\t812\nSigIgn:\t0\nSigCgt:\t0\n")); st.nsInit {
		t.Error("a process with one NSpid of 812 is not an init")
	}
	for _, bad := range []string{"", "NSpid:\t1\nSigCgt:\tzz\nSigIgn:\t0\n", "NSpid:\t1\nSigCgt:\t0\n"} {
		if _, err := parseSigStatus([]byte(bad)); err == nil {
			t.Errorf("parseSigStatus(%q) accepted", bad)
		}
	}
}

// A process that is not a namespace init is never waited for: this test's
// own child is PID >1 in the test's namespace.
func TestAwaitHandlerNotInit(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	done := make(chan struct{})
	go func() { awaitHandler(context.Background(), cmd.Process.Pid, unix.SIGTERM, time.Hour); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("awaitHandler waited for a process that is not a namespace init")
	}
}

// Our own process catches SIGUSR1 once signal.Notify installed the handler;
// it is not an init, so the parse is what is checked here.
func TestReadSigStatusSeesHandler(t *testing.T) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, unix.SIGUSR2)
	defer signal.Stop(ch)
	st, err := readSigStatus(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if !st.handles(unix.SIGUSR2) {
		t.Errorf("SigCgt %x lacks SIGUSR2 after signal.Notify", st.caught)
	}
}

func TestParseProcessAge(t *testing.T) {
	// A command name with spaces and a parenthesis; starttime 12345 ticks.
	stat := []byte("812 (my (odd) cmd) S 1 812 812 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 12345 1000 100 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0")
	age, err := parseProcessAge(stat, []byte("133.45 200.00\n"), 100)
	if err != nil || age != 10*time.Second {
		t.Errorf("age = %v, %v; want 10s (133.45 s uptime, started at 123.45 s)", age, err)
	}
	for _, bad := range [][2]string{{"812 cmd S", "1.0 1.0"}, {"812 (x) S 1", "1.0"}, {string(stat), ""}, {string(stat), "x"}} {
		if _, err := parseProcessAge([]byte(bad[0]), []byte(bad[1]), 100); err == nil {
			t.Errorf("parseProcessAge(%q, %q) accepted", bad[0], bad[1])
		}
	}
	if age, err := processAge(os.Getpid()); err != nil || age < 0 || age > 24*time.Hour {
		t.Errorf("our own age = %v, %v", age, err)
	}
}

func TestInLibcontainerInit(t *testing.T) {
	if !inLibcontainerInit(os.Getpid()) {
		t.Error("this process runs its own binary")
	}
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	if inLibcontainerInit(cmd.Process.Pid) {
		t.Error("sleep does not run this binary")
	}
}

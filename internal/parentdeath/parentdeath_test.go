package parentdeath

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperEnv makes the test binary act as a parent: it starts a child
// through Start, then ends the thread it forked from (and others), prints
// the child's pid and waits to be killed.
const helperEnv = "PARENTDEATH_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		helper()
		return
	}
	os.Exit(m.Run())
}

func helper() {
	child := exec.Command("sleep", "300")
	if err := Start(child); err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	// Threads that locked themselves and returned end with their
	// goroutine; were the fork made from one of them, the child would die
	// here, with its parent alive.
	for i := 0; i < 8; i++ {
		done := make(chan struct{})
		go func() { runtime.LockOSThread(); close(done) }()
		<-done
	}
	fmt.Println(child.Process.Pid)
	time.Sleep(time.Hour) // not select{}: with every goroutine blocked Go would call it a deadlock and exit
}

func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// A zombie (state Z) is dead already; only its parent did not wait.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

// The child outlives the threads of its parent but not its parent's kill -9.
func TestChildDiesWithParent(t *testing.T) {
	if _, err := exec.LookPath("sleep"); err != nil {
		t.Skip("no sleep:", err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	parent := exec.Command(self, "-test.run=^$")
	parent.Env = append(os.Environ(), helperEnv+"=1")
	out, err := parent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	defer parent.Process.Kill()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("helper said %q", line)
	}
	defer syscall.Kill(pid, syscall.SIGKILL)
	time.Sleep(200 * time.Millisecond)
	if !alive(pid) {
		t.Fatal("the child died while its parent lives (a parent thread's exit killed it)")
	}
	parent.Process.Signal(syscall.SIGKILL)
	parent.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatal("the child outlived its parent's kill -9")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kasa-runtime/kasa/virtcontainers"
)

// runtimeClassSettle is how long the measured sandbox idles before its
// memory is read, and then the window its CPU use is averaged over.
const runtimeClassSettle = 3 * time.Second

// runtimeclass boots an idle sandbox exactly as a pod gets one (VM,
// virtiofsd, pod cgroup), measures what it costs the node, and prints a
// RuntimeClass whose overhead.podFixed tells the scheduler.
func runtimeclass(path string, stdout, stderr io.Writer) int {
	cfg, ok := loadConfig(path, stderr)
	if !ok {
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	id := throwawayID("runtimeclass")
	fmt.Fprintf(stderr, "kasa: measuring an idle sandbox (%d vCPU, %d MiB guest) for %s...\n",
		cfg.Hypervisor.DefaultVCPUs, cfg.Hypervisor.DefaultMemory, 2*runtimeClassSettle)
	sb, err := virtcontainers.CreateSandbox(ctx, virtcontainers.SandboxConfig{ID: id, Config: cfg, Hostname: "measure"})
	if err != nil {
		fmt.Fprintf(stderr, "kasa: %v\n", err)
		return 1
	}
	defer sb.Stop(context.WithoutCancel(ctx))
	time.Sleep(runtimeClassSettle)

	vmm := sb.PID()
	cpu0 := cpuTicks(vmm)
	time.Sleep(runtimeClassSettle)
	cpu1 := cpuTicks(vmm)
	// 100 ticks a second (USER_HZ), averaged over the window, in millicores.
	milli := (cpu1 - cpu0) * 10 * int64(time.Second/runtimeClassSettle)

	qemu := pssKiB(vmm)
	var daemons int64
	for _, p := range childrenOf(os.Getpid()) {
		if p != vmm {
			daemons += pssKiB(p)
			for _, c := range childrenOf(p) {
				daemons += pssKiB(c)
			}
		}
	}
	self := pssKiB(os.Getpid()) // the shim runs the same code
	total := qemu + daemons + self
	memMiB := roundUp((total+1023)/1024, 16)
	cpuMilli := max(roundUp(milli, 50), 100)

	fmt.Fprintf(stdout, `# Measured by kasa runtimeclass on %s: an idle sandbox costs the node
# QEMU %d MiB + virtiofsd %d MiB + runtime %d MiB (PSS), and %dm CPU
# (%s, %d vCPU, %d MiB guest). The pod's own limits are added to the VM's
# size by the runtime, so only this fixed part is overhead.
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata:
  name: kata
handler: kata
overhead:
  podFixed:
    memory: "%dMi"
    cpu: "%dm"
`, hostname(), qemu/1024, daemons/1024, self/1024, milli, accelOf(sb), cfg.Hypervisor.DefaultVCPUs, cfg.Hypervisor.DefaultMemory, memMiB, cpuMilli)
	return 0
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

func hostname() string {
	h, _ := os.Hostname()
	return h
}

func accelOf(sb *virtcontainers.Sandbox) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", sb.PID()))
	if strings.Contains(string(b), "tcg") {
		return "TCG"
	}
	return "KVM"
}

// pssKiB is a process's proportional set size.
func pssKiB(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Pss:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// cpuTicks is a process's user plus system time in clock ticks.
func cpuTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name may hold spaces; fields start after its ")".
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return u + s
}

func childrenOf(pid int) []int {
	var out []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, t := range tasks {
		b, _ := os.ReadFile(t)
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

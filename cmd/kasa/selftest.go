package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/virtcontainers"
)

// selftest boots a throwaway VM with the configuration, shows what its agent
// reports beside the host, and powers it off.
func selftest(path string, stdout, stderr io.Writer) int {
	cfg, ok := loadConfig(path, stderr)
	if !ok {
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	id := throwawayID("selftest")
	fmt.Fprintf(stdout, "[1/3] booting VM %s (%s, %s, %d vCPU, %d MiB) from %s\n", id, cfg.HypervisorName,
		cfg.Hypervisor.MachineType, cfg.Hypervisor.DefaultVCPUs, cfg.Hypervisor.DefaultMemory, describeSource(cfg))
	start := time.Now()
	vm, err := virtcontainers.StartVM(ctx, id, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "kasa: %v\n", err)
		return 1
	}
	// QEMU's own CPU time to this point says what the boot cost, however
	// busy the host was (wall time does not).
	fmt.Fprintf(stdout, "      agent answered after %s (qemu pid %d, %d ms of QEMU CPU time)\n",
		time.Since(start).Round(time.Millisecond), vm.PID(), cpuTicks(vm.PID())*10)

	fmt.Fprintln(stdout, "[2/3] asking the agent about its guest")
	d, err := vm.Agent.GuestDetails(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "kasa: %v\n", err)
		vm.Stop(context.WithoutCancel(ctx))
		return 1
	}
	var uts unix.Utsname
	unix.Uname(&uts)
	fmt.Fprintf(stdout, "      guest kernel %-24s host kernel %s\n", d.GetKernelRelease(), unix.ByteSliceToString(uts.Release[:]))
	fmt.Fprintf(stdout, "      guest: %d CPU, %d MiB, agent %s (API v%d), features %s\n", d.GetOnlineCpus(),
		d.GetMemTotalBytes()>>20, d.GetAgentVersion(), d.GetApiVersion(), strings.Join(d.GetFeatures(), ","))

	fmt.Fprintln(stdout, "[3/3] powering the VM off through the agent")
	if err := vm.Stop(context.WithoutCancel(ctx)); err != nil {
		fmt.Fprintf(stderr, "kasa: stop: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "      stopped; state removed. Total %s\n", time.Since(start).Round(time.Millisecond))
	return 0
}

// throwawayID names a sandbox the command makes and removes itself.
func throwawayID(prefix string) string {
	var b [4]byte
	rand.Read(b[:])
	return prefix + "-" + hex.EncodeToString(b[:])
}

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/log"
	"github.com/sirupsen/logrus"

	"github.com/kasa-runtime/kasa/configuration"
	"github.com/kasa-runtime/kasa/test/bench/internal/procmem"
	"github.com/kasa-runtime/kasa/virtcontainers"
)

// restorePhases are one sandbox VM's start through the runtime
// (virtcontainers.StartVM, the default configuration: rootless QEMU,
// vhost-user-vsock), read from its log.
type restorePhases struct {
	// copy is the clone's copy of the template's memory.
	copy time.Duration
	// load is the device state loaded, devices is the vhost-user devices
	// added (clone only).
	load, devices time.Duration
	// answered is StartVM's QEMU start → agent answered (Check, clock set).
	answered time.Duration
	// total is StartVM from call to return.
	total time.Duration
	// pss is QEMU's PSS once idle, by kind, KiB.
	pss map[string]int64
}

// phaseHook collects the elapsed times the runtime logs.
type phaseHook struct {
	mu sync.Mutex
	p  *restorePhases
}

func (h *phaseHook) Levels() []logrus.Level { return logrus.AllLevels }
func (h *phaseHook) Fire(e *logrus.Entry) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	dur := func(k string) time.Duration { d, _ := e.Data[k].(time.Duration); return d }
	switch e.Message {
	case "starting from a VM template":
		h.p.copy = dur("elapsed")
	case "restored from the template":
		h.p.load, h.p.devices = dur("load"), dur("devices")
	case "agent answered":
		h.p.answered = dur("elapsed")
	}
	return nil
}

// benchRestore prints cold boot beside a restore from a template, phase by
// phase, and QEMU's PSS for idle VMs of each kind, started n at a time:
// for the guest's root as the initramfs, then as the DAX image when
// guest.img is there.
func benchRestore(dir string, n int) error {
	if err := benchRestoreRoot(dir, n, "initrd.img"); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(dir, "guest.img")); err != nil {
		fmt.Printf("\nno %s: the DAX image is not measured\n", filepath.Join(dir, "guest.img"))
		return nil
	}
	return benchRestoreRoot(dir, n, "guest.img")
}

// benchRestoreRoot is benchRestore for one root file: initrd.img (the
// hypervisor.qemu.initrd key) or guest.img (image).
func benchRestoreRoot(dir string, n int, root string) error {
	cfg := configuration.Default()
	cfg.Hypervisor.Kernel = filepath.Join(dir, "vmlinuz")
	if root == "guest.img" {
		cfg.Hypervisor.Initrd, cfg.Hypervisor.Image = "", filepath.Join(dir, root)
	} else {
		cfg.Hypervisor.Initrd = filepath.Join(dir, root)
	}
	tdir, err := os.MkdirTemp("/run", "kasa-bench-template-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tdir)
	cfg.Factory.TemplatePath = tdir

	logger := logrus.New()
	logger.SetLevel(logrus.InfoLevel)
	logger.SetOutput(io.Discard)
	hook := &phaseHook{}
	logger.AddHook(hook)
	ctx := log.WithLogger(context.Background(), logrus.NewEntry(logger))

	made := time.Now()
	m, err := virtcontainers.CreateTemplate(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Printf("\nguest root %s: cold boot beside restore from a template, through the runtime (rootless QEMU, vhost-user-vsock, %d MiB), %d VMs each, median\n", root, cfg.Hypervisor.DefaultMemory, n)
	fmt.Printf("template made in %s (boot to the agent's ready line, save), device state %d KiB, memory written %.1f MiB\n\n",
		time.Since(made).Round(time.Millisecond), m.StateBytes>>10, float64(allocatedBytes(filepath.Join(tdir, m.Key, "memory")))/(1<<20))
	fmt.Printf("%-8s %10s %10s %10s %12s %12s %10s %10s %10s %10s %10s\n", "start", "mem copy", "load", "devices", "1st answer", "StartVM", "QEMU PSS", "anon", "file", "shmem", "guest RAM")
	for _, template := range []bool{false, true} {
		cfg.Factory.EnableTemplate = template
		var runs []restorePhases
		var vms []*virtcontainers.VM
		for i := 0; i < n; i++ {
			p := &restorePhases{}
			hook.mu.Lock()
			hook.p = p
			hook.mu.Unlock()
			start := time.Now()
			vm, err := virtcontainers.StartVM(ctx, fmt.Sprintf("bench-restore-%d", i), cfg)
			if err != nil {
				stopAll(vms)
				return err
			}
			p.total = time.Since(start)
			vms = append(vms, vm)
			runs = append(runs, *p)
		}
		time.Sleep(3 * time.Second) // idle
		for i, vm := range vms {
			runs[i].pss = procmem.SmapsRollup(vm.PID())
			runs[i].pss["memfd"] = procmem.MemfdKiB(vm.PID())
		}
		stopAll(vms)
		name := "cold"
		if template {
			name = "restore"
		}
		med := func(f func(restorePhases) time.Duration) string {
			var v []time.Duration
			for _, r := range runs {
				v = append(v, f(r))
			}
			sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
			if v[len(v)/2] == 0 {
				return "-"
			}
			return ms(v[len(v)/2])
		}
		kib := func(k string) string {
			var v []int64
			for _, r := range runs {
				v = append(v, r.pss[k])
			}
			sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
			return strconv.FormatInt(v[len(v)/2]>>10, 10) + " MiB"
		}
		fmt.Printf("%-8s %10s %10s %10s %12s %12s %10s %10s %10s %10s %10s\n", name,
			med(func(r restorePhases) time.Duration { return r.copy }), med(func(r restorePhases) time.Duration { return r.load }),
			med(func(r restorePhases) time.Duration { return r.devices }), med(func(r restorePhases) time.Duration { return r.answered }),
			med(func(r restorePhases) time.Duration { return r.total }), kib("Pss"), kib("Pss_Anon"), kib("Pss_File"), kib("Pss_Shmem"), kib("memfd"))
	}
	fmt.Println("\n'1st answer' = QEMU start → agent answered (version, health, clock set); 'StartVM' includes the memory copy and the")
	fmt.Println("template check. PSS of QEMU with", n, "idle VMs of the kind running: shmem is the guest RAM (memfd, private to each VM),")
	fmt.Println("file the mapped binaries and the guest image (shared by every VM that maps it), anon QEMU's heap and TCG's")
	fmt.Println("translation cache. 'guest RAM' is what the VM's memfd holds, mapped or not: a clone's whole copy of the")
	fmt.Println("template's written memory counts there even before the guest touches it.")
	return nil
}

func stopAll(vms []*virtcontainers.VM) {
	for _, vm := range vms {
		vm.Stop(context.Background())
	}
}

func allocatedBytes(path string) int64 {
	var st syscall.Stat_t
	if syscall.Stat(path, &st) != nil {
		return 0
	}
	return st.Blocks * 512
}

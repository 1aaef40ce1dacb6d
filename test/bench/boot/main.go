// Command boot measures the phases of a Kasa VM boot under the configured
// accelerator: QEMU spawn → first console byte → agent listening → first
// ttrpc answer, median of N boots per machine type, beside the same
// kernel's raw boot to a trivial /init that resets the VM at once.
//
//	go run ./test/bench/boot [-n 5] [-machines q35,pc,microvm] [-restore=false]
//
// Then, unless -restore=false, the runtime's own start of a sandbox VM cold
// beside a restore from a VM template, phase by phase, with QEMU's PSS.
//
// It needs root, QEMU and KASA_TEST_GUEST_DIR (make bench-boot sets it).
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/agent/client"
	"github.com/kasa-runtime/kasa/guest-image/cpio"
	"github.com/kasa-runtime/kasa/hypervisor"
	"github.com/kasa-runtime/kasa/hypervisor/qemu"
)

type phases struct {
	spawned, firstByte, ready, answered, exited time.Duration
}

func main() {
	n := flag.Int("n", 5, "boots per configuration")
	machines := flag.String("machines", "q35,pc,microvm", "machine types to measure")
	memory := flag.Uint("memory", 512, "guest memory, MiB")
	restore := flag.Bool("restore", true, "also measure cold boot beside a restore from a VM template, through the runtime")
	flag.Parse()
	if err := run(*n, strings.Split(*machines, ","), uint32(*memory)); err != nil {
		fmt.Fprintln(os.Stderr, "bench-boot:", err)
		os.Exit(1)
	}
	if *restore {
		if err := benchRestore(os.Getenv("KASA_TEST_GUEST_DIR"), *n); err != nil {
			fmt.Fprintln(os.Stderr, "bench-boot: restore:", err)
			os.Exit(1)
		}
	}
}

func run(n int, machines []string, memory uint32) error {
	dir := os.Getenv("KASA_TEST_GUEST_DIR")
	if dir == "" {
		return fmt.Errorf("KASA_TEST_GUEST_DIR is not set (make bench-boot sets it)")
	}
	ctx := context.Background()
	accel, reason, err := qemu.ResolveAccelerator(ctx, hypervisor.AccelAuto, "/usr/bin/qemu-system-x86_64")
	if err != nil {
		return err
	}
	rawInitrd, cleanup, err := buildRawInitrd()
	if err != nil {
		return err
	}
	defer cleanup()

	manifest, _ := os.ReadFile(filepath.Join(dir, "manifest.json"))
	fmt.Printf("kernel: %s\naccelerator: %s (%s)\nguest memory: %d MiB, 1 vCPU, %d boots each, median\n\n",
		kernelLine(manifest), accel, strings.Join(strings.Fields(reason), " "), memory, n)
	fmt.Printf("%-8s %-12s %12s %12s %12s %12s %12s\n", "machine", "init", "qemu up", "1st console", "init ready", "1st answer", "qemu exit")
	for _, m := range machines {
		for _, raw := range []bool{false, true} {
			var runs []phases
			for i := 0; i < n; i++ {
				initrd := filepath.Join(dir, "initrd.img")
				if raw {
					initrd = rawInitrd
				}
				cfg := hypervisor.VMConfig{
					ID: fmt.Sprintf("bench-%s-%d", m, i), StateDir: filepath.Join("/run/kasa/vm", fmt.Sprintf("bench-%s-%d", m, i)),
					Path: "/usr/bin/qemu-system-x86_64", Kernel: filepath.Join(dir, "vmlinuz"), Initrd: initrd,
					MachineType: m, VCPUs: 1, MemoryMiB: memory, Accelerator: accel,
					AgentTransport: hypervisor.TransportVirtioSerial,
				}
				p, err := bootOnce(ctx, cfg, raw)
				if err != nil {
					return fmt.Errorf("%s boot %d: %w", m, i, err)
				}
				runs = append(runs, p)
			}
			name := "kasa-agent"
			if raw {
				name = "trivial"
			}
			med := median(runs)
			fmt.Printf("%-8s %-12s %12s %12s %12s %12s %12s\n", m, name, ms(med.spawned), ms(med.firstByte), ms(med.ready), ms(med.answered), ms(med.exited))
		}
	}
	fmt.Println("\ntimes from QEMU spawn; 'init ready' = the agent's \"kasa-agent ready\" (or rawinit's line) seen on the console;")
	fmt.Println("'1st answer' = first ttrpc Check answered over virtio-serial; 'qemu exit' = after DestroySandbox (agent) or by itself (trivial).")
	return nil
}

func kernelLine(manifest []byte) string {
	for _, line := range strings.Split(string(manifest), "\n") {
		if strings.Contains(line, `"kernel":`) {
			return strings.Trim(strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), `"kernel":`)), `",`)
		}
	}
	return "unknown"
}

func bootOnce(ctx context.Context, cfg hypervisor.VMConfig, raw bool) (phases, error) {
	var p phases
	q := qemu.New()
	if err := q.CreateVM(ctx, cfg); err != nil {
		return p, err
	}
	t0 := time.Now()
	if err := q.StartVM(ctx); err != nil {
		return p, err
	}
	defer q.StopVM(ctx)
	p.spawned = time.Since(t0)

	marker := []byte("kasa-agent ready")
	if raw {
		marker = []byte("rawinit: up")
	}
	consoleDone := make(chan struct{})
	go func() {
		defer close(consoleDone)
		for time.Since(t0) < 60*time.Second {
			b, _ := os.ReadFile(q.ConsolePath())
			if len(b) > 0 && p.firstByte == 0 {
				p.firstByte = time.Since(t0)
			}
			if bytes.Contains(b, marker) {
				p.ready = time.Since(t0)
				return
			}
			select {
			case <-q.Done():
				if b, _ := os.ReadFile(q.ConsolePath()); bytes.Contains(b, marker) {
					p.ready = time.Since(t0)
				}
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()

	if !raw {
		dctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		c, err := client.Connect(dctx, func(ctx context.Context) (net.Conn, error) { return q.DialGuest(ctx, api.AgentVsockPort) })
		if err != nil {
			return p, err
		}
		if err := c.Check(dctx); err != nil {
			return p, err
		}
		p.answered = time.Since(t0)
		c.DestroySandbox(dctx)
		c.Close()
	}
	select {
	case <-q.Done():
		p.exited = time.Since(t0)
	case <-time.After(60 * time.Second):
		return p, fmt.Errorf("VM did not exit")
	}
	<-consoleDone
	if p.ready == 0 {
		return p, fmt.Errorf("console never showed %q", marker)
	}
	return p, nil
}

// buildRawInitrd compiles rawinit statically and packs it as /init.
func buildRawInitrd() (string, func(), error) {
	tmp, err := os.MkdirTemp("", "kasa-bench-")
	if err != nil {
		return "", nil, err
	}
	cleanup := func() { os.RemoveAll(tmp) }
	bin := filepath.Join(tmp, "rawinit")
	cmd := exec.Command("go", "build", "-o", bin, "./test/bench/boot/rawinit")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		cleanup()
		return "", nil, fmt.Errorf("build rawinit: %v: %s", err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		cleanup()
		return "", nil, err
	}
	path := filepath.Join(tmp, "raw.cpio")
	f, err := os.Create(path)
	if err != nil {
		cleanup()
		return "", nil, err
	}
	w := cpio.NewWriter(f)
	w.Add(cpio.Entry{Name: "dev", Mode: cpio.TypeDir | 0o755})
	w.Add(cpio.Entry{Name: "dev/console", Mode: cpio.TypeChar | 0o600, Major: 5, Minor: 1})
	w.Add(cpio.Entry{Name: "init", Mode: cpio.TypeReg | 0o755, Data: data})
	if err := w.Close(); err != nil {
		f.Close()
		cleanup()
		return "", nil, err
	}
	return path, cleanup, f.Close()
}

func median(runs []phases) phases {
	pick := func(get func(phases) time.Duration) time.Duration {
		v := make([]time.Duration, len(runs))
		for i, r := range runs {
			v[i] = get(r)
		}
		sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
		return v[len(v)/2]
	}
	return phases{
		spawned:   pick(func(p phases) time.Duration { return p.spawned }),
		firstByte: pick(func(p phases) time.Duration { return p.firstByte }),
		ready:     pick(func(p phases) time.Duration { return p.ready }),
		answered:  pick(func(p phases) time.Duration { return p.answered }),
		exited:    pick(func(p phases) time.Duration { return p.exited }),
	}
}

func ms(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return fmt.Sprintf("%d ms", d.Milliseconds())
}

// Command demo is the README's main job: a container in its own VM through
// containerd, with Kasa's installed shim and its embedded defaults, shown
// beside the same container under runc. It starts a private containerd and
// leaves nothing behind.
//
//	make demo   (installs Kasa first, then runs this)
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/kasa-runtime/kasa/test/ctrtest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func step(n int, format string, args ...any) {
	fmt.Printf("[%d/4] %s\n", n, fmt.Sprintf(format, args...))
}

func run(ctx context.Context) error {
	step(1, "starting a private containerd (its own root, state and socket)")
	c, err := ctrtest.Launch(ctx, ctrtest.Options{})
	if err != nil {
		return err
	}
	defer func() {
		if err := c.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "demo: stopping containerd:", err)
		}
	}()
	fmt.Printf("      containerd answered after %v on %s\n", c.StartupTime.Round(time.Millisecond), c.Address)

	step(2, "importing a busybox image built locally from busybox-static")
	image, err := c.ImportBusybox(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("      %s\n", image)

	script := `echo "kernel $(uname -r)"; echo "cpu $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"; echo "memory $(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2) kB"`
	step(3, "ctr run --runtime io.containerd.kasa.v2: the container in its own VM (embedded defaults)")
	kasa, err := c.RunContainer(ctx, ctrtest.Container{ID: "kasa-demo", Runtime: ctrtest.RuntimeKasa, Args: []string{"sh", "-c", script}})
	if err != nil {
		return err
	}
	if kasa.ExitCode != 0 {
		return fmt.Errorf("kasa container failed: %s", kasa)
	}
	runc, err := c.RunContainer(ctx, ctrtest.Container{ID: "runc-demo", Runtime: ctrtest.RuntimeRunc, Args: []string{"sh", "-c", script}})
	if err != nil {
		return err
	}
	fmt.Printf("      %-9s %-10s %s\n", "runtime", "wall time", "what the container sees")
	for _, r := range []struct {
		name string
		res  ctrtest.Result
	}{{"kasa", kasa}, {"runc", runc}} {
		lines := strings.Split(strings.TrimSpace(r.res.Stdout), "\n")
		fmt.Printf("      %-9s %-10v %s\n", r.name, r.res.Duration.Round(time.Millisecond), strings.Join(lines, " | "))
	}
	host, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	fmt.Printf("      host kernel %s: kasa's container ran on the guest kernel, runc's on the host's\n", strings.TrimSpace(string(host)))

	step(4, "checking that nothing is left behind (VM, shim, mounts, state)")
	if left := ctrtest.WaitNoLeftovers(ctx, 10*time.Second, c, "kasa-demo"); len(left) > 0 {
		return fmt.Errorf("left behind:\n  %s", strings.Join(left, "\n  "))
	}
	fmt.Println("      clean")
	return nil
}

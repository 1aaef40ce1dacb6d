// Command run measures `ctr run --rm IMAGE ID echo hello` wall time with
// runc and with Kasa, same busybox image, same private containerd, runs
// interleaved, and prints median, min and max side by side with the ratio.
//
//	go run ./test/bench/run [-n 5] [-shim-dir DIR] [-kasa-config FILE] [-allow-missing-kasa]
//
// It needs root, containerd, ctr, runc and busybox-static. Without
// containerd-shim-kasa-v2 (on PATH, in -shim-dir or in ./bin) it prints
// runc's figures and exits 1, or 0 with -allow-missing-kasa.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/kasa-runtime/kasa/test/ctrtest"
)

type config struct {
	n                int
	warmup           int
	shimDir          string
	kasaConfig       string
	allowMissingKasa bool
	timeout          time.Duration
}

// series is one runtime's measurements.
type series struct {
	label, runtime string
	missing        string // why this runtime was not measured
	err            error
	times          []time.Duration
	ids            []string
}

func main() {
	var cfg config
	flag.IntVar(&cfg.n, "n", 5, "measured runs per runtime")
	flag.IntVar(&cfg.warmup, "warmup", 1, "unmeasured runs per runtime first")
	flag.StringVar(&cfg.shimDir, "shim-dir", "", "directory holding "+ctrtest.ShimKasa+" (default: PATH, then ./bin)")
	flag.StringVar(&cfg.kasaConfig, "kasa-config", "", "Kasa configuration file, passed as the shim's ConfigPath")
	flag.BoolVar(&cfg.allowMissingKasa, "allow-missing-kasa", false, "exit 0 when the Kasa shim is not found")
	flag.DurationVar(&cfg.timeout, "timeout", 3*time.Minute, "limit for one ctr run")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code, err := run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-run:", err)
	}
	os.Exit(code)
}

func run(ctx context.Context, cfg config) (int, error) {
	if cfg.n < 1 {
		return 2, fmt.Errorf("-n must be at least 1")
	}
	if os.Geteuid() != 0 {
		return 1, fmt.Errorf("needs root (it starts its own containerd)")
	}
	for _, b := range []string{"containerd", "ctr", "runc", "containerd-shim-runc-v2"} {
		if _, err := exec.LookPath(b); err != nil {
			return 1, fmt.Errorf("%s not found on PATH (hack/install-deps.sh installs it)", b)
		}
	}
	runc := &series{label: "runc", runtime: ctrtest.RuntimeRunc}
	kasa := &series{label: "kasa", runtime: ctrtest.RuntimeKasa}
	opts := ctrtest.Options{KasaConfigPath: cfg.kasaConfig}
	if dir, err := findShim(cfg.shimDir); err != nil {
		kasa.missing = err.Error()
	} else {
		opts.BinDirs = []string{dir}
	}

	c, err := ctrtest.Launch(ctx, opts)
	if err != nil {
		return 1, err
	}
	defer func() {
		if err := c.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "bench-run: stop containerd:", err)
		}
	}()
	image, err := c.ImportBusybox(ctx)
	if err != nil {
		return 1, err
	}
	version, _ := c.Version(ctx)
	fmt.Printf("ctr run --rm IMAGE ID echo hello: wall time of ctr, %d runs per runtime after %d warm-up, interleaved\n", cfg.n, cfg.warmup)
	fmt.Printf("containerd %s (private, answered %v after start), image %s\n", version, c.StartupTime.Round(time.Millisecond), image)
	if len(opts.BinDirs) > 0 {
		fmt.Printf("kasa shim: %s\n", filepath.Join(opts.BinDirs[0], ctrtest.ShimKasa))
	}
	fmt.Println()

	all := []*series{runc, kasa}
	for i := -cfg.warmup; i < cfg.n && ctx.Err() == nil; i++ {
		for _, s := range all {
			if s.missing != "" || s.err != nil {
				continue
			}
			d, err := measure(ctx, c, s, i, cfg.timeout)
			if err != nil {
				s.err = err
				fmt.Fprintf(os.Stderr, "bench-run: %s: %v\ntail of containerd's log:\n%s\n", s.label, err, c.LogTail(30))
				continue
			}
			if i >= 0 {
				s.times = append(s.times, d)
			}
		}
	}
	if ctx.Err() != nil {
		return 1, ctx.Err()
	}

	var ids []string
	for _, s := range all {
		ids = append(ids, s.ids...)
	}
	left := ctrtest.WaitNoLeftovers(ctx, 15*time.Second, c, ids...)
	printTable(all)

	code := 0
	if runc.err != nil || kasa.err != nil {
		code = 1
	}
	if kasa.missing != "" && !cfg.allowMissingKasa {
		code = 1
	}
	if len(left) > 0 {
		fmt.Printf("\nleft behind after the runs:\n  %s\n", strings.Join(left, "\n  "))
		code = 1
	}
	return code, nil
}

// findShim returns the directory holding the Kasa shim.
func findShim(dir string) (string, error) {
	if dir != "" {
		p := filepath.Join(dir, ctrtest.ShimKasa)
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s not found in %s", ctrtest.ShimKasa, dir)
		}
		return filepath.Abs(dir)
	}
	if p, err := exec.LookPath(ctrtest.ShimKasa); err == nil {
		return filepath.Abs(filepath.Dir(p))
	}
	if _, err := os.Stat(filepath.Join("bin", ctrtest.ShimKasa)); err == nil {
		return filepath.Abs("bin")
	}
	return "", fmt.Errorf("%s not found (looked on PATH and in ./bin; -shim-dir names another directory)", ctrtest.ShimKasa)
}

// measure runs one hello-world container and checks what it printed.
func measure(ctx context.Context, c *ctrtest.Containerd, s *series, i int, timeout time.Duration) (time.Duration, error) {
	id := fmt.Sprintf("bench-%s-%d", s.label, i)
	if i < 0 {
		id = fmt.Sprintf("bench-%s-warmup%d", s.label, -i)
	}
	s.ids = append(s.ids, id)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := c.RunContainer(ctx, ctrtest.Container{ID: id, Runtime: s.runtime, Args: []string{"echo", "hello"}})
	if err != nil {
		return 0, err
	}
	if res.ExitCode != 0 || res.Stdout != "hello\n" {
		return 0, errors.New(res.String())
	}
	return res.Duration, nil
}

func printTable(all []*series) {
	fmt.Printf("%-30s %10s %10s %10s %8s\n", "runtime", "median", "min", "max", "vs runc")
	base := median(all[0].times)
	for _, s := range all {
		name := fmt.Sprintf("%s (%s)", s.label, s.runtime)
		switch {
		case s.missing != "":
			fmt.Printf("%s: %s\n", s.label, s.missing)
		case s.err != nil:
			fmt.Printf("%-30s failed: %v\n", name, firstLine(s.err.Error()))
		case len(s.times) == 0:
			fmt.Printf("%-30s no runs\n", name)
		default:
			m := median(s.times)
			ratio := "-"
			if base > 0 {
				ratio = fmt.Sprintf("%.1fx", float64(m)/float64(base))
			}
			fmt.Printf("%-30s %10s %10s %10s %8s\n", name, ms(m), ms(slices.Min(s.times)), ms(slices.Max(s.times)), ratio)
		}
	}
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond)) }

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

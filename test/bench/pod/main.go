// Command pod measures CRI pods with the "kata" handler (Kasa) beside runc,
// same containerd, same images, one run: the pod-ready latency
// (RunPodSandbox, CreateContainer, StartContainer, then ExecSync `true`
// answered; median and p90 of -n pods, one at a time), bursts of -bursts
// pods created at once (time until all are ready, and when the first and
// the median pod were), and the host memory per
// idle pod (PSS from /proc/PID/smaps_rollup of the pod's host processes:
// QEMU + shim for Kasa, shim + pause + container for runc; mean of -idle
// pods).
//
// Usage:
//
//	go run ./test/bench/pod [-n 10] [-bursts 10,20] [-boot-slots 1,2,4] [-idle 3] [-kasa-config FILE] [-shim-dir DIR] [-crictl PATH] [-template on|off]
//
// A burst of 50 (-bursts 10,20,50) takes a few minutes under TCG on two
// CPUs. Other work on the host makes every figure noisy: compare runc and
// kata from the same run. -boot-slots repeats the kata bursts with each
// value of runtime.max_concurrent_boots, to choose it for a host.
//
// -template sets [factory] enable_template in a copy of the Kasa
// configuration: "on" measures pods started from a VM template (the first,
// unmeasured pod makes it), "off" cold-booted pods; unset keeps the file's.
//
// It needs root, containerd, runc, the CNI plugins and crictl (make
// cri-tools).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kasa-runtime/kasa/test/bench/internal/procmem"
	"github.com/kasa-runtime/kasa/test/ctrtest"
)

type config struct {
	n, idle               int
	bursts, bootSlots     []int
	kasaConfig, shimDir   string
	crictl                string
	timeout               time.Duration
	handlers              []string
	containerImage, pause string
	template              string
}

func main() {
	var cfg config
	flag.IntVar(&cfg.n, "n", 10, "pods measured one at a time, per handler")
	bursts := flag.String("bursts", "10,20", "sizes of the bursts of pods created at once, per handler, comma-separated (\"\": none)")
	bootSlots := flag.String("boot-slots", "", "also run the kata bursts with runtime.max_concurrent_boots set to each of these values, comma-separated (rewrites -kasa-config meanwhile)")
	flag.IntVar(&cfg.idle, "idle", 3, "idle pods whose memory is measured, per handler (0: skip)")
	flag.StringVar(&cfg.kasaConfig, "kasa-config", "", "Kasa configuration file (the shim's ConfigPath option)")
	flag.StringVar(&cfg.shimDir, "shim-dir", "", "directory put first on containerd's PATH (e.g. ./bin)")
	flag.StringVar(&cfg.crictl, "crictl", "bin/crictl", "crictl binary")
	flag.DurationVar(&cfg.timeout, "timeout", 20*time.Minute, "limit for the whole run")
	flag.StringVar(&cfg.template, "template", "", `"on" or "off": [factory] enable_template for the kata pods (default: the configuration's)`)
	flag.Parse()
	cfg.bursts = counts("bursts", *bursts)
	cfg.bootSlots = counts("boot-slots", *bootSlots)
	cfg.handlers = []string{"runc", "kata"}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "bench-pod:", err)
		os.Exit(1)
	}
}

// counts parses a comma-separated list of positive integers, or exits.
func counts(name, list string) []int {
	var out []int
	for _, f := range strings.FieldsFunc(list, func(r rune) bool { return r == ',' }) {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "bench-pod: -%s: %q is not a positive count\n", name, f)
			os.Exit(2)
		}
		out = append(out, n)
	}
	return out
}

func run(ctx context.Context, cfg config) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (it starts its own containerd)")
	}
	if cfg.template != "" {
		conf, err := withTemplateMode(cfg.kasaConfig, cfg.template)
		if err != nil {
			return err
		}
		defer os.Remove(conf)
		cfg.kasaConfig = conf
	}
	repo, _ := os.Getwd()
	reg, err := ctrtest.StartCRIRegistry(repo)
	if err != nil {
		return err
	}
	defer reg.Close()
	opts := ctrtest.Options{CRI: true, Crictl: cfg.crictl, SandboxImage: ctrtest.PauseImage,
		RegistryMirror: reg.Endpoint(), KasaConfigPath: cfg.kasaConfig}
	if cfg.shimDir != "" {
		abs, _ := filepath.Abs(cfg.shimDir)
		opts.BinDirs = []string{abs}
	}
	c, err := ctrtest.Launch(ctx, opts)
	if err != nil {
		return err
	}
	defer c.Stop()
	b := &bench{c: c}
	if _, err := c.CrictlOK(ctx, "pull", ctrtest.BusyboxImage); err != nil {
		return err
	}
	if _, err := c.CrictlOK(ctx, "pull", ctrtest.PauseImage); err != nil {
		return err
	}
	fmt.Printf("bench-pod: %d pods one at a time, bursts of %v, %d idle pods; handlers %v; VM templates %s\n", cfg.n, cfg.bursts, cfg.idle, cfg.handlers, orDefault(cfg.template))
	fmt.Println("(the host's other load makes every figure noisy: compare runc and kata of this run)")

	type result struct {
		ready     []time.Duration
		phases    map[string][]time.Duration
		bursts    []burstRun
		pssKiB    []int64
		pssDetail string
	}
	results := map[string]*result{}
	var sweep map[int][]burstRun
	for _, h := range cfg.handlers {
		r := &result{phases: map[string][]time.Duration{}}
		results[h] = r
		// One unmeasured pod first: image unpacking, first shim start.
		if _, err := b.pod(ctx, h, "warm"); err != nil {
			return fmt.Errorf("%s: %w", h, err)
		}
		for i := range cfg.n {
			p, err := b.pod(ctx, h, fmt.Sprintf("seq%d", i))
			if err != nil {
				return fmt.Errorf("%s: %w", h, err)
			}
			r.ready = append(r.ready, p.ready)
			for k, v := range p.phases {
				r.phases[k] = append(r.phases[k], v)
			}
			fmt.Printf("  %-5s pod %2d ready in %v\n", h, i+1, p.ready.Round(time.Millisecond))
		}
		for _, n := range cfg.bursts {
			br := b.burst(ctx, h, n)
			r.bursts = append(r.bursts, br)
			fmt.Printf("  %-5s burst of %d: %s\n", h, n, br)
		}
		if h == "kata" && len(cfg.bootSlots) > 0 {
			if sweep, err = b.slotSweep(ctx, cfg); err != nil {
				return err
			}
		}
		if cfg.idle > 0 {
			r.pssKiB, r.pssDetail, err = b.idleMemory(ctx, h, cfg.idle)
			if err != nil {
				return fmt.Errorf("%s: idle memory: %w", h, err)
			}
		}
	}

	fmt.Printf("\npod ready = RunPodSandbox → CreateContainer → StartContainer → ExecSync true (crictl, %d pods each)\n", cfg.n)
	fmt.Printf("%-6s %10s %10s %10s %10s   %s\n", "", "median", "p90", "min", "max", "median of runp / create+start / exec")
	for _, h := range cfg.handlers {
		r := results[h]
		fmt.Printf("%-6s %10v %10v %10v %10v   %v / %v / %v\n", h, pct(r.ready, 50), pct(r.ready, 90), pct(r.ready, 0), pct(r.ready, 100),
			pct(r.phases["runp"], 50), pct(r.phases["create+start"], 50), pct(r.phases["exec"], 50))
	}
	if k, rc := results["kata"], results["runc"]; k != nil && rc != nil && pct(rc.ready, 50) > 0 {
		fmt.Printf("kata/runc median ratio: %.1fx\n", float64(pct(k.ready, 50))/float64(pct(rc.ready, 50)))
	}
	for i, n := range cfg.bursts {
		fmt.Printf("\nburst: %d pods created at once; until all answered ExecSync (first / median / last pod ready)\n", n)
		for _, h := range cfg.handlers {
			fmt.Printf("%-6s %s\n", h, results[h].bursts[i])
		}
		if k, rc := results["kata"], results["runc"]; k != nil && rc != nil && rc.bursts[i].all > 0 && k.bursts[i].failed == 0 {
			fmt.Printf("kata/runc ratio: %.1fx\n", float64(k.bursts[i].all)/float64(rc.bursts[i].all))
		}
	}
	if sweep != nil {
		printSlotSweep(cfg, sweep)
	}
	if cfg.idle > 0 {
		fmt.Printf("\nhost memory per idle pod (PSS, one sleeping busybox container; %d pods; guest RAM counts what\n"+
			"the VM's memfd holds, mapped or not; TCG code is QEMU's translation cache, absent under KVM)\n", cfg.idle)
		for _, h := range cfg.handlers {
			r := results[h]
			fmt.Printf("%-6s %8.1f MiB   %s\n", h, float64(mean(r.pssKiB))/1024, r.pssDetail)
		}
	}
	if left := ctrtest.WaitNoLeftovers(ctx, 15*time.Second, c, b.removed...); len(left) > 0 {
		return fmt.Errorf("left behind:\n  %s", strings.Join(left, "\n  "))
	}
	return nil
}

type bench struct {
	c *ctrtest.Containerd

	mu sync.Mutex
	// removed are the pods this run made and removed: the leftover check
	// looks for what is theirs only, as other work may share the host.
	removed []string
}

type podRun struct {
	id, ctr string
	ready   time.Duration
	phases  map[string]time.Duration
}

// start runs a pod with one sleeping busybox container and waits for
// ExecSync `true`; the pod is left running.
func (b *bench) start(ctx context.Context, handler, name string) (podRun, error) {
	r := podRun{phases: map[string]time.Duration{}}
	pod := ctrtest.PodConfig(handler + "-" + name)
	podPath, err := b.c.WriteJSON("pod-"+handler+"-"+name+".json", pod)
	if err != nil {
		return r, err
	}
	ctrPath, err := b.c.WriteJSON("ctr-"+handler+"-"+name+".json", map[string]any{
		"metadata": map[string]any{"name": "sleep"},
		"image":    map[string]any{"image": ctrtest.BusyboxImage},
		"command":  []string{"sleep", "3600"},
		"linux":    map[string]any{"security_context": map[string]any{"namespace_options": map[string]any{"pid": 1}}},
	})
	if err != nil {
		return r, err
	}
	t0 := time.Now()
	if r.id, err = b.c.CrictlOK(ctx, "runp", "--runtime", handler, podPath); err != nil {
		return r, err
	}
	t1 := time.Now()
	if r.ctr, err = b.c.CrictlOK(ctx, "create", r.id, ctrPath, podPath); err != nil {
		return r, err
	}
	if _, err = b.c.CrictlOK(ctx, "start", r.ctr); err != nil {
		return r, err
	}
	t2 := time.Now()
	if _, err = b.c.CrictlOK(ctx, "exec", "--sync", r.ctr, "true"); err != nil {
		return r, err
	}
	t3 := time.Now()
	r.ready = t3.Sub(t0)
	r.phases["runp"], r.phases["create+start"], r.phases["exec"] = t1.Sub(t0), t2.Sub(t1), t3.Sub(t2)
	return r, nil
}

func (b *bench) remove(ctx context.Context, id string) {
	if id != "" {
		b.c.CrictlOK(context.WithoutCancel(ctx), "rmp", "--force", id)
		b.mu.Lock()
		b.removed = append(b.removed, id)
		b.mu.Unlock()
	}
}

// pod measures one pod and removes it.
func (b *bench) pod(ctx context.Context, handler, name string) (podRun, error) {
	r, err := b.start(ctx, handler, name)
	b.remove(ctx, r.id)
	return r, err
}

// burstRun is one burst: when its pods were ready, and which failed.
type burstRun struct {
	n      int
	all    time.Duration   // until the last pod was ready (or failed)
	ready  []time.Duration // each ready pod, from the burst's start
	failed int
	err    error // the first failure
}

func (r burstRun) String() string {
	s := fmt.Sprintf("%10v   (%v / %v / %v)", r.all.Round(time.Millisecond), pct(r.ready, 0), pct(r.ready, 50), pct(r.ready, 100))
	if r.failed > 0 {
		s += fmt.Sprintf("   %d of %d failed, first: %v", r.failed, r.n, r.err)
	}
	return s
}

// burst starts n pods at once and measures until the last is ready.
func (b *bench) burst(ctx context.Context, handler string, n int) burstRun {
	var wg sync.WaitGroup
	runs := make([]podRun, n)
	errs := make([]error, n)
	done := make([]time.Duration, n)
	t0 := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runs[i], errs[i] = b.start(ctx, handler, fmt.Sprintf("burst%d-%d", n, i))
			done[i] = time.Since(t0)
		}()
	}
	wg.Wait()
	r := burstRun{n: n, all: time.Since(t0)}
	for _, p := range runs {
		b.remove(ctx, p.id)
	}
	for i, err := range errs {
		if err != nil {
			if r.failed == 0 {
				r.err = err
			}
			r.failed++
			continue
		}
		r.ready = append(r.ready, done[i])
	}
	return r
}

// idleMemory starts n pods, lets them settle, and sums the PSS of each
// pod's host processes.
func (b *bench) idleMemory(ctx context.Context, handler string, n int) ([]int64, string, error) {
	var runs []podRun
	defer func() {
		for _, r := range runs {
			b.remove(ctx, r.id)
		}
	}()
	for i := range n {
		r, err := b.start(ctx, handler, fmt.Sprintf("idle%d", i))
		runs = append(runs, r)
		if err != nil {
			return nil, "", err
		}
	}
	time.Sleep(10 * time.Second)
	var out []int64
	parts := map[string][]int64{}
	for _, r := range runs {
		procs := podProcesses(r.id)
		var total int64
		sums := map[string]int64{}
		for kind, pids := range procs {
			for _, pid := range pids {
				if kind != "qemu" {
					sums[kind] += procmem.SmapsRollup(pid)["Pss"]
					continue
				}
				for part, kib := range qemuParts(pid) {
					sums[part] += kib
				}
			}
		}
		for part, kib := range sums {
			parts[part] = append(parts[part], kib)
			total += kib
		}
		out = append(out, total)
	}
	var detail []string
	kinds := make([]string, 0, len(parts))
	for k := range parts {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	for _, k := range kinds {
		detail = append(detail, fmt.Sprintf("%s %.1f", k, float64(mean(parts[k]))/1024))
	}
	return out, strings.Join(detail, ", ") + " MiB", nil
}

// podProcesses finds the host processes of a pod by kind: its shim (started
// with -id <pod id>), the shim's descendants (QEMU for Kasa; pause and the
// container for runc).
func podProcesses(podID string) map[string][]int {
	type proc struct {
		pid, ppid int
		name      string
		argv      []string
	}
	var all []proc
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(stat)
		end := strings.LastIndexByte(s, ')')
		if end < 0 {
			continue
		}
		fields := strings.Fields(s[end+2:])
		ppid, _ := strconv.Atoi(fields[1])
		cmdline, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		all = append(all, proc{pid: pid, ppid: ppid, name: s[strings.IndexByte(s, '(')+1 : end], argv: strings.Split(string(cmdline), "\x00")})
	}
	out := map[string][]int{}
	shims := map[int]bool{}
	for _, p := range all {
		if strings.HasPrefix(filepath.Base(p.argv[0]), "containerd-shim") {
			for i, a := range p.argv {
				if a == "-id" && i+1 < len(p.argv) && p.argv[i+1] == podID {
					shims[p.pid] = true
					out["shim"] = append(out["shim"], p.pid)
				}
			}
		}
	}
	// Descendants of the shim, by generations.
	in := shims
	for len(in) > 0 {
		next := map[int]bool{}
		for _, p := range all {
			if in[p.ppid] {
				next[p.pid] = true
				kind := "container"
				switch {
				case strings.HasPrefix(p.name, "qemu"):
					kind = "qemu"
				case p.name == "pause" || p.name == "kasa-pause":
					kind = "pause"
				case strings.HasPrefix(p.name, "virtiofsd"):
					kind = "virtiofsd"
				}
				out[kind] = append(out[kind], p.pid)
			}
		}
		in = next
	}
	return out
}

// qemuParts splits a QEMU's memory, in KiB: "guest RAM" is the PSS of its
// memfd mappings plus what the memfd holds that no process has mapped (a
// clone's copy of the template's memory the guest has not touched again
// still costs the host); "TCG code" is TCG's translation cache (its one
// large executable anonymous mapping); "qemu" is everything else (heap,
// device state, the binary's share of the page cache).
func qemuParts(pid int) map[string]int64 {
	out := map[string]int64{}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return out
	}
	part := "qemu"
	var memfdRss int64
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		if !strings.HasSuffix(f[0], ":") && strings.Contains(f[0], "-") && len(f) >= 5 {
			// A mapping's header: range perms offset dev inode [path].
			part = "qemu"
			switch {
			case len(f) >= 6 && strings.HasPrefix(f[5], "/memfd:"):
				part = "guest RAM"
			case f[1] == "rwxp" && len(f) == 5:
				part = "TCG code"
			}
			continue
		}
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "Pss:":
			out[part] += v
		case "Rss:":
			if part == "guest RAM" {
				memfdRss += v
			}
		}
	}
	if unmapped := procmem.MemfdKiB(pid) - memfdRss; unmapped > 0 {
		out["guest RAM"] += unmapped
	}
	return out
}

func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s) - 1) * p / 100
	return s[i].Round(time.Millisecond)
}

func mean(v []int64) int64 {
	if len(v) == 0 {
		return 0
	}
	var sum int64
	for _, x := range v {
		sum += x
	}
	return sum / int64(len(v))
}

// withTemplateMode writes a copy of the Kasa configuration at path with
// [factory] enable_template set by mode ("on" or "off") and returns it.
func withTemplateMode(path, mode string) (string, error) {
	if mode != "on" && mode != "off" {
		return "", fmt.Errorf("-template %q: want on or off", mode)
	}
	var body []byte
	if path != "" {
		var err error
		if body, err = os.ReadFile(path); err != nil {
			return "", err
		}
	}
	if strings.Contains(string(body), "[factory]") {
		return "", fmt.Errorf("-template: %s has its own [factory] table", path)
	}
	body = append(body, []byte("\n[factory]\nenable_template = "+strconv.FormatBool(mode == "on")+"\n")...)
	f, err := os.CreateTemp("", "bench-pod-kasa-*.toml")
	if err != nil {
		return "", err
	}
	defer f.Close()
	_, err = f.Write(body)
	return f.Name(), err
}

func orDefault(mode string) string {
	if mode == "" {
		return "as configured"
	}
	return mode
}

//go:build integration

package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kasa-runtime/kasa/agent/client"
	"github.com/kasa-runtime/kasa/guest-image/cpio"
	"github.com/kasa-runtime/kasa/test/ctrtest"
	"github.com/kasa-runtime/kasa/virtcontainers"
)

// Bounds of TestHostileGuest. They are fixed, not relative to the guest's
// effort: what the host holds for a guest must not grow with what the
// guest does. Measured here (TCG, 2 cores) the shim peaks at about
// 40 MiB and the VM's state directory at 2 MiB (two capped console logs);
// the bounds leave a wide margin.
const (
	// hostileShimRSSMax bounds the shim's peak RSS (VmHWM).
	hostileShimRSSMax = 150 << 20
	// hostileStateDirMax bounds /run/kasa/vm/<id>, every file.
	hostileStateDirMax = 4 << 20
	// hostileKasaRunMax bounds /run/kasa/{vm,sbs,shared}/<id> together.
	hostileKasaRunMax = 8 << 20
	// hostileRunGrowthMax bounds the growth of /run as a whole, when it is
	// a tmpfs of its own (not on this development host, where /run shares
	// the root disk with every other job and its usage says nothing).
	hostileRunGrowthMax = 16 << 20
	// hostileShimFDsMax bounds the shim's open descriptors.
	hostileShimFDsMax = 2048
	// hostileLogGrowthMax bounds what containerd's log (the shims log
	// into it) gains while the guest floods the host with what it can
	// provoke a log line with.
	hostileLogGrowthMax = 1 << 20
	// hostileAttackFor is how long the guest attacks before it is deleted.
	hostileAttackFor = 60 * time.Second
	// hostileListenPort and hostileReportPort are the host ports the test
	// listens on for the guest: the first takes its connection flood, the
	// second its counters.
	hostileListenPort = 7000
	hostileReportPort = 7001
)

// TestHostileGuest runs a pod whose guest attacks the host side (see
// test/hostile/guest) next to an ordinary pod, the victim, and checks that
// the attacker's shim stays small, /run stays bounded, no forged OOM event
// reaches the victim, the victim keeps running and answering, and deleting
// the attacker leaves nothing of it. It prints its figures.
func TestHostileGuest(t *testing.T) {
	c, ctx := startKasaHarness(t, 15*time.Minute)
	guestDir := requireVM(t)
	initrd := buildHostileInitrd(t)
	victim, attacker := "victim-"+newID(t)[3:], "hostile-"+newID(t)[3:]

	// Every OOM event containerd publishes, from before either pod starts.
	sub, err := dialContainerd(t, c).subscribe(ctx, `topic=="/tasks/oom"`)
	if err != nil {
		t.Fatal(err)
	}
	var oomMu sync.Mutex
	var ooms []string
	go func() {
		for {
			e, err := sub.Recv()
			if err != nil {
				return
			}
			oomMu.Lock()
			ooms = append(ooms, string(e.GetEvent().GetValue()))
			oomMu.Unlock()
		}
	}()

	startDetached(t, ctx, c, victim, nil, "sleep", "100000")
	execIn(t, ctx, c, victim, "before")

	// The attacker: same kernel, the hostile init, the victim's id to forge.
	conf := filepath.Join(filepath.Dir(initrd), "hostile.toml")
	body := fmt.Sprintf("[hypervisor.qemu]\nkernel = %q\ninitrd = %q\nkernel_params = %q\n\n[agent.kata]\ndial_timeout = 60\n",
		filepath.Join(guestDir, "vmlinuz"), initrd,
		fmt.Sprintf("kasa.hostile.victim=%s kasa.hostile.port=%d kasa.hostile.report=%d", victim, hostileListenPort, hostileReportPort))
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	runBefore := runUsed(t)
	logBefore := fileSize(c.LogPath)
	res, err := c.RunContainer(ctx, ctrtest.Container{ID: attacker, Runtime: ctrtest.RuntimeKasa, Detach: true, RuntimeConfigPath: conf, Args: []string{"sleep", "100000"}})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("start the hostile pod: %v %s", err, res)
	}
	shims := pidsWithCmdline("-id " + attacker)
	if len(shims) != 1 {
		t.Fatalf("the hostile pod's shim: %v", shims)
	}
	shim := shims[0]
	cpuBefore := cpuTicks(shim)
	stateDir := filepath.Join(virtcontainers.VMStateRoot, attacker)

	// What the guest connects to: one port that accepts, reads and holds
	// every stream, one that reads the guest's counters.
	flood := listenGuest(t, stateDir, hostileListenPort)
	reports := listenGuest(t, stateDir, hostileReportPort)
	var accepted, received atomic.Int64
	var lastReport atomic.Value
	lastReport.Store("")
	go acceptAll(flood, func(conn net.Conn) {
		accepted.Add(1)
		n, _ := io.Copy(io.Discard, conn)
		received.Add(n)
	})
	go acceptAll(reports, func(conn net.Conn) {
		sc := bufio.NewScanner(conn)
		for sc.Scan() {
			lastReport.Store(sc.Text())
		}
	})

	// The attack, sampled twice a second.
	var peakDir, peakRun, peakKasa int64
	var peakFDs, peakThreads int
	deadline := time.Now().Add(hostileAttackFor)
	for time.Now().Before(deadline) {
		peakDir = max(peakDir, dirBytes(stateDir))
		peakRun = max(peakRun, runUsed(t)-runBefore)
		peakKasa = max(peakKasa, kasaBytes(attacker))
		peakFDs = max(peakFDs, countFDs(shim))
		peakThreads = max(peakThreads, int(statusKiB(shim, "Threads")))
		time.Sleep(500 * time.Millisecond)
	}
	// Its metrics are the shim's, not the guest's forgeries.
	assertMetricsUnforged(t, attacker)
	// The shim still answers for the attacked pod, and asking it for the
	// pod's processes (the guest answers with a million) costs it a
	// bounded amount of memory.
	if got := taskStatus(t, ctx, c, attacker); got != "RUNNING" {
		t.Errorf("the hostile pod's task is %q under attack, want RUNNING", got)
	}
	var psResults []string
	for range 3 {
		res := ctr(t, ctx, c, "task", "ps", attacker)
		lines := strings.Count(res.Stdout, "\n")
		psResults = append(psResults, fmt.Sprintf("exit %d, %d lines, %q", res.ExitCode, lines, firstLine(strings.TrimSpace(res.Stderr))))
		if lines > client.MaxReplyElements {
			t.Errorf("ctr task ps listed %d processes of the hostile guest: its reply was not bounded", lines)
		}
		if strings.Contains(res.Stderr, client.ErrBadReply.Error()) {
			break
		}
	}
	metrics := ctr(t, ctx, c, "task", "metrics", attacker)
	// containerd logs why a task gave no metrics.
	statsRefused := logCount(c, "agent StatsContainer: reply of")
	if metrics.ExitCode == 0 || statsRefused == 0 {
		t.Errorf("ctr task metrics of the hostile guest's 300000 per-CPU counters was not refused as too many elements: %s", metrics)
	}
	rss, hwm := statusKiB(shim, "VmRSS")<<10, statusKiB(shim, "VmHWM")<<10
	cpu := cpuTicks(shim) - cpuBefore
	logGrowth := fileSize(c.LogPath) - logBefore
	report := lastReport.Load().(string)
	var guest struct {
		Phase         string `json:"phase"`
		ConsoleBytes  int64  `json:"console_bytes"`
		OOMForged     int64  `json:"oom_forged"`
		GuestLogBytes int64  `json:"guest_log_bytes"`
		EmptyReads    int64  `json:"empty_reads"`
	}
	json.Unmarshal([]byte(report), &guest)

	// The victim: untouched, answering, and no OOM event of it (or of any
	// container) reached containerd.
	execIn(t, ctx, c, victim, "under attack")
	if got := taskStatus(t, ctx, c, victim); got != "RUNNING" {
		t.Errorf("victim task is %q, want RUNNING", got)
	}

	// The hostile guest ignores DestroySandbox: the host has to stop its VM.
	start := time.Now()
	ctr(t, ctx, c, "task", "kill", "-s", "SIGKILL", attacker)
	ctr(t, ctx, c, "task", "delete", "-f", attacker)
	ctr(t, ctx, c, "container", "delete", attacker)
	teardown := time.Since(start)
	flood.Close()
	reports.Close()
	assertGone(t, ctx, c, attacker)
	runAfter := runUsed(t) - runBefore

	oomMu.Lock()
	forwarded := append([]string(nil), ooms...)
	oomMu.Unlock()
	for _, e := range forwarded {
		t.Errorf("containerd got an OOM event during the attack: %q", e)
	}
	execIn(t, ctx, c, victim, "after")

	figures := []string{
		fmt.Sprintf("attack lasted %v", hostileAttackFor),
		fmt.Sprintf("shim RSS %.1f MiB at the end, peak (VmHWM) %.1f MiB (bound %d MiB)", mib(rss), mib(hwm), hostileShimRSSMax>>20),
		fmt.Sprintf("shim CPU %.1f s over the attack, peak %d descriptors (bound %d), peak %d threads", float64(cpu)/100, peakFDs, hostileShimFDsMax, peakThreads),
		fmt.Sprintf("/run/kasa/vm/<id> peak %.2f MiB (bound %d MiB); /run/kasa/*/<id> peak %.2f MiB (bound %d MiB)",
			mib(peakDir), hostileStateDirMax>>20, mib(peakKasa), hostileKasaRunMax>>20),
		runFigure(peakRun, runAfter),
		fmt.Sprintf("containerd's log grew %.1f KiB (bound %d KiB)", float64(logGrowth)/1024, hostileLogGrowthMax>>10),
		fmt.Sprintf("host listener: %d streams accepted, %.1f MiB received", accepted.Load(), mib(received.Load())),
		fmt.Sprintf("guest's counters: %s", report),
		fmt.Sprintf("forged OOM events forwarded to containerd: %d (guest sent %d)", len(forwarded), guest.OOMForged),
		fmt.Sprintf("teardown of the hostile pod (kill, delete): %v", teardown.Round(time.Millisecond)),
		fmt.Sprintf("ctr task ps of the hostile pod (300000 processes claimed): %s", strings.Join(psResults, "; ")),
		fmt.Sprintf("ctr task metrics of the hostile pod (300000 per-CPU counters): exit %d, %q; containerd logged %d StatsContainer replies refused as too many elements",
			metrics.ExitCode, firstLine(strings.TrimSpace(metrics.Stderr)), statsRefused),
		fmt.Sprintf("guest log flood: the guest wrote %.1f MiB, containerd's log has %d of its lines and %d \"suppressed\" lines",
			mib(guest.GuestLogBytes), logCount(c, "hostile log flood"), logCount(c, "lines suppressed")),
		fmt.Sprintf("containerd's log: %d warnings of forged container ids, %d ttrpc lines on streams never opened, %d VMs that ignored DestroySandbox and were made to quit",
			logCount(c, "guest named a container that is not this sandbox's"), logCount(c, "received message on inactive stream"), logCount(c, "guest did not power off")),
	}
	for _, f := range figures {
		t.Log(f)
		fmt.Println("hostile guest:", f)
	}

	if hwm > hostileShimRSSMax {
		t.Errorf("shim peak RSS %.1f MiB, bound %d MiB", mib(hwm), hostileShimRSSMax>>20)
	}
	if peakDir > hostileStateDirMax {
		t.Errorf("state directory peaked at %.2f MiB, bound %d MiB", mib(peakDir), hostileStateDirMax>>20)
	}
	if runIsTmpfs() && peakRun > hostileRunGrowthMax {
		t.Errorf("/run grew by %.2f MiB under the attack, bound %d MiB", mib(peakRun), hostileRunGrowthMax>>20)
	}
	if peakKasa > hostileKasaRunMax {
		t.Errorf("/run/kasa/*/%s peaked at %.2f MiB, bound %d MiB", attacker, mib(peakKasa), hostileKasaRunMax>>20)
	}
	if peakFDs > hostileShimFDsMax {
		t.Errorf("the shim held %d descriptors, bound %d", peakFDs, hostileShimFDsMax)
	}
	if logGrowth > hostileLogGrowthMax {
		t.Errorf("containerd's log grew by %d bytes under the attack, bound %d", logGrowth, hostileLogGrowthMax)
	}
	if guest.GuestLogBytes == 0 || logCount(c, "lines suppressed") == 0 {
		t.Errorf("the guest log flood (%d bytes sent) was not cut short with a suppressed count", guest.GuestLogBytes)
	}
	if guest.Phase != "attacking" || guest.ConsoleBytes == 0 || guest.OOMForged == 0 || accepted.Load() == 0 {
		t.Errorf("the guest did not attack as meant (report %q, %d streams accepted)", report, accepted.Load())
	}

	removeTask(t, ctx, c, victim)
}

// A guest that never says it is serving fails its pod's start, and the
// failed boot leaves nothing behind: no QEMU, no shim, no state, no cgroup.
func TestHostileGuestRefusesToServe(t *testing.T) {
	c, ctx := startKasaHarness(t, 5*time.Minute)
	guestDir := requireVM(t)
	initrd := buildHostileInitrd(t)
	id := "refuser-" + newID(t)[3:]
	conf := filepath.Join(filepath.Dir(initrd), "refuse.toml")
	body := fmt.Sprintf("[hypervisor.qemu]\nkernel = %q\ninitrd = %q\nkernel_params = \"kasa.hostile.refuse=1\"\n\n[agent.kata]\ndial_timeout = 60\n",
		filepath.Join(guestDir, "vmlinuz"), initrd)
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := c.RunContainer(ctx, ctrtest.Container{ID: id, Runtime: ctrtest.RuntimeKasa, Detach: true, RuntimeConfigPath: conf, Args: []string{"true"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode == 0 || !strings.Contains(res.Stderr, "NOT_SERVING") {
		t.Errorf("start of a pod whose guest is not serving: %s", res)
	}
	ctr(t, ctx, c, "container", "delete", id)
	assertGone(t, ctx, c, id)
}

// buildHostileInitrd builds test/hostile/guest and packs it as the /init
// of an initramfs, in a directory QEMU (its own uid) can read.
func buildHostileInitrd(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "kasa-hostile-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "init")
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "./test/hostile/guest")
	build.Dir = "../.."
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the hostile guest: %v\n%s", err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "initrd.img")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	w := cpio.NewWriter(f)
	for _, d := range []string{"dev", "proc", "sys"} {
		w.Add(cpio.Entry{Name: d, Mode: cpio.TypeDir | 0o755})
	}
	w.Add(cpio.Entry{Name: "dev/console", Mode: cpio.TypeChar | 0o600, Major: 5, Minor: 1})
	w.Add(cpio.Entry{Name: "init", Mode: cpio.TypeReg | 0o755, Data: data})
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// listenGuest listens where the vhost-user-vsock backend sends the guest's
// connections to host port port.
func listenGuest(t *testing.T, stateDir string, port int) *net.UnixListener {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(stateDir, "vsock.sock_"+strconv.Itoa(port)), Net: "unix"})
	if err != nil {
		t.Fatalf("listen for the guest on port %d: %v", port, err)
	}
	return l
}

func acceptAll(l *net.UnixListener, serve func(net.Conn)) {
	for {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			serve(conn)
		}()
	}
}

// execIn runs echo in container id and fails the test unless it answers.
func execIn(t *testing.T, ctx context.Context, c *ctrtest.Containerd, id, when string) {
	t.Helper()
	res := ctr(t, ctx, c, "task", "exec", "--exec-id", "probe-"+strings.ReplaceAll(when, " ", "-"), id, "echo", "alive")
	if res.ExitCode != 0 || res.Stdout != "alive\n" {
		t.Errorf("exec in %s %s: %s", id, when, res)
	}
}

// assertGone fails the test if anything of container id (a pod of its
// own) is left: its QEMU, its shim, its mounts and directories under
// /run/kasa, its cgroup, its task or container in containerd. Other
// containers of c may still run.
func assertGone(t *testing.T, ctx context.Context, c *ctrtest.Containerd, id string) {
	t.Helper()
	left := ctrtest.WaitNoLeftovers(ctx, 10*time.Second, nil, id)
	cgroups, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", c.Namespace, id))
	if d := filepath.Join("/sys/fs/cgroup", c.Namespace, id); isDir(d) {
		cgroups = append(cgroups, d)
	}
	for _, d := range cgroups {
		left = append(left, "cgroup "+d)
	}
	for _, kind := range []string{"tasks", "containers"} {
		for _, got := range strings.Fields(mustCtr(t, ctx, c, kind, "ls", "-q")) {
			if got == id {
				left = append(left, kind+" still lists "+id)
			}
		}
	}
	if len(left) > 0 {
		t.Errorf("left behind by %s:\n  %s", id, strings.Join(left, "\n  "))
	}
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// runIsTmpfs reports whether /run is a tmpfs of its own.
func runIsTmpfs() bool {
	var st syscall.Statfs_t
	return syscall.Statfs("/run", &st) == nil && st.Type == 0x01021994 // TMPFS_MAGIC
}

func runFigure(peak, after int64) string {
	if !runIsTmpfs() {
		return "/run as a whole: not measured, it is not a tmpfs here (it shares the root disk with every other job)"
	}
	return fmt.Sprintf("/run (tmpfs) grew at most %.2f MiB under attack (bound %d MiB), %.2f MiB after teardown (containerd's log, in /run/kasa-test, included)",
		mib(peak), hostileRunGrowthMax>>20, mib(after))
}

// runUsed is what /run holds now, in bytes.
func runUsed(t *testing.T) int64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs("/run", &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks-st.Bfree) * st.Bsize
}

// kasaBytes is what sandbox id keeps under /run/kasa: its VM's state, its
// sandbox record and its share (not the container filesystems mounted
// into the share).
func kasaBytes(id string) int64 {
	var n int64
	for _, kind := range []string{"vm", "sbs", "shared"} {
		n += dirBytes(filepath.Join(ctrtest.KasaRunDir, kind, id))
	}
	return n
}

// dirBytes is the size of every regular file under dir on dir's own file
// system: mounts below it are not counted.
func dirBytes(dir string) int64 {
	var top syscall.Stat_t
	if syscall.Stat(dir, &top) != nil {
		return 0
	}
	var n int64
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		var st syscall.Stat_t
		if syscall.Lstat(p, &st) != nil {
			return nil
		}
		if st.Dev != top.Dev {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.Type().IsRegular() {
			n += st.Size
		}
		return nil
	})
	return n
}

func countFDs(pid int) int {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents)
}

// cpuTicks is utime+stime of pid, in clock ticks (100 a second).
func cpuTicks(pid int) int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+1:]
	}
	f := strings.Fields(s)
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	k, _ := strconv.ParseInt(f[12], 10, 64)
	return u + k
}

// logCount counts the lines of containerd's log that contain s.
func logCount(c *ctrtest.Containerd, s string) int {
	b, _ := os.ReadFile(c.LogPath)
	return strings.Count(string(b), s)
}

func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.Size()
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

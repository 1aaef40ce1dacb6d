//go:build integration

package integration

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/virtcontainers"
)

// Containers in one real guest: the agent runs them with libcontainer, and
// every RPC of the container lifecycle, stdio, signals, cgroups and OOM
// events is exercised against it. One VM serves every sub-test.
func TestContainers(t *testing.T) {
	cfg := testConfig(t)
	if os.Getenv("KASA_TEST_AGENT_DEBUG") != "" {
		cfg.Hypervisor.KernelParams += " KASA_AGENT_DEBUG=1"
	}
	id := newID(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	vm, err := virtcontainers.StartVM(ctx, id, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer assertNothingLeft(t, id)
	defer vm.Stop(context.Background())
	defer logConsoleOnFailure(t, vm.ConsolePath())
	ag := vm.Agent

	err = ag.CreateSandbox(ctx, &api.CreateSandboxRequest{
		SandboxId: id, Hostname: "kasa-pod",
		Dns: []string{"nameserver 10.96.0.10", "search default.svc.cluster.local", "options ndots:5"},
		Storages: []*api.Storage{{
			Driver: api.StorageDriver_STORAGE_DRIVER_LOCAL, MountPoint: "/run/kasa/test/emptydir", Options: []string{"mode=0777"},
		}},
	})
	if err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	if err := ag.CreateSandbox(ctx, &api.CreateSandboxRequest{SandboxId: id}); !errdefs.IsAlreadyExists(err) {
		t.Errorf("second CreateSandbox: %v, want AlreadyExists", err)
	}
	makeGuestRootfs(ctx, t, ag)

	t.Run("Echo", func(t *testing.T) {
		start := time.Now()
		if err := createContainer(ctx, ag, "echo", testSpec("echo", "hello from the guest"), ctrOpts{}); err != nil {
			t.Fatalf("CreateContainer: %v", err)
		}
		t.Cleanup(func() { removeContainer(t, ag, "echo") })
		created := time.Now()
		if err := ag.StartContainer(ctx, "echo"); err != nil {
			t.Fatalf("StartContainer: %v", err)
		}
		out := readAll(ctx, t, ag, "echo", "", false)
		code := waitExit(ctx, t, ag, "echo", "")
		t.Logf("CreateContainer → exit of echo: %s (create %s, start → exit %s)", time.Since(start).Round(time.Millisecond),
			created.Sub(start).Round(time.Millisecond), time.Since(created).Round(time.Millisecond))
		if out != "hello from the guest\n" || code != 0 {
			t.Fatalf("stdout %q exit %d", out, code)
		}
		if errOut := readAll(ctx, t, ag, "echo", "", true); errOut != "" {
			t.Errorf("stderr %q", errOut)
		}
		// WaitProcess can be asked again after the exit, by either name of init.
		if code := waitExit(ctx, t, ag, "echo", "echo"); code != 0 {
			t.Errorf("second wait: %d", code)
		}
		if err := createContainer(ctx, ag, "echo", testSpec("true"), ctrOpts{}); !errdefs.IsAlreadyExists(err) {
			t.Errorf("duplicate CreateContainer: %v, want AlreadyExists", err)
		}
		if err := ag.StartContainer(ctx, "echo"); !errdefs.IsFailedPrecondition(err) {
			t.Errorf("StartContainer of an exited container: %v, want FailedPrecondition", err)
		}
		// The first container pays for warming the guest up; the next one shows the steady state.
		start = time.Now()
		runContainer(ctx, t, ag, "echo2", testSpec("echo", "again"), ctrOpts{})
		if out := readAll(ctx, t, ag, "echo2", "", false); out != "again\n" || waitExit(ctx, t, ag, "echo2", "") != 0 {
			t.Errorf("second echo: %q", out)
		}
		t.Logf("CreateContainer → exit of a second echo: %s", time.Since(start).Round(time.Millisecond))
	})

	t.Run("LargeOutput", func(t *testing.T) {
		// More than the agent buffers (1 MiB): the writer waits for the reader.
		runContainer(ctx, t, ag, "big", testSpec("dd", "if=/dev/zero", "bs=65536", "count=40"), ctrOpts{})
		total := 0
		for {
			data, eof, err := ag.ReadStdout(ctx, "big", "", 1<<20)
			if err != nil {
				t.Fatalf("ReadStdout after %d bytes: %v", total, err)
			}
			total += len(data)
			if eof {
				break
			}
		}
		if total != 40*65536 {
			t.Errorf("read %d bytes, want %d", total, 40*65536)
		}
		if code := waitExit(ctx, t, ag, "big", ""); code != 0 {
			t.Errorf("exit %d", code)
		}
	})

	t.Run("ExitCode", func(t *testing.T) {
		runContainer(ctx, t, ag, "exit3", testSpec("sh", "-c", "echo oops >&2; exit 3"), ctrOpts{})
		if code := waitExit(ctx, t, ag, "exit3", ""); code != 3 {
			t.Fatalf("exit status %d, want 3", code)
		}
		if e := readAll(ctx, t, ag, "exit3", "", true); e != "oops\n" {
			t.Errorf("stderr %q", e)
		}
	})

	t.Run("Stdin", func(t *testing.T) {
		runContainer(ctx, t, ag, "cat", testSpec("cat"), ctrOpts{stdin: true})
		for _, chunk := range []string{"ping\n", "pong\n"} {
			if n, err := ag.WriteStdin(ctx, "cat", "", []byte(chunk)); err != nil || n != len(chunk) {
				t.Fatalf("WriteStdin: %d, %v", n, err)
			}
		}
		if err := ag.CloseStdin(ctx, "cat", ""); err != nil {
			t.Fatalf("CloseStdin: %v", err)
		}
		if out := readAll(ctx, t, ag, "cat", "", false); out != "ping\npong\n" {
			t.Errorf("stdout %q", out)
		}
		if code := waitExit(ctx, t, ag, "cat", ""); code != 0 {
			t.Errorf("exit %d", code)
		}
		if _, err := ag.WriteStdin(ctx, "cat", "", []byte("late")); !errdefs.IsFailedPrecondition(err) {
			t.Errorf("WriteStdin after CloseStdin: %v, want FailedPrecondition", err)
		}
	})

	t.Run("Terminal", func(t *testing.T) {
		s := testSpec("sh", "-c", "stty size; tty; read line; echo got:$line")
		if err := createContainer(ctx, ag, "tty", s, ctrOpts{terminal: true, stdin: true}); err != nil {
			t.Fatalf("CreateContainer: %v", err)
		}
		t.Cleanup(func() { removeContainer(t, ag, "tty") })
		if err := ag.TtyWinResize(ctx, "tty", "", 40, 100); err != nil {
			t.Fatalf("TtyWinResize: %v", err)
		}
		if err := ag.StartContainer(ctx, "tty"); err != nil {
			t.Fatalf("StartContainer: %v", err)
		}
		readUntil(ctx, t, ag, "tty", "", "/dev/pts/")
		if _, err := ag.WriteStdin(ctx, "tty", "", []byte("typed\n")); err != nil {
			t.Fatalf("WriteStdin: %v", err)
		}
		out := readAll(ctx, t, ag, "tty", "", false)
		if code := waitExit(ctx, t, ag, "tty", ""); code != 0 {
			t.Errorf("exit %d; output %q", code, out)
		}
		if !strings.Contains(out, "got:typed") {
			t.Errorf("terminal output %q lacks the echoed input", out)
		}
		if e := readAll(ctx, t, ag, "tty", "", true); e != "" {
			t.Errorf("stderr of a terminal process: %q, want immediate end of stream", e)
		}
	})

	// A long-running container for exec, signals, pause, stats and updates;
	// DestroySandbox, at the end, is what removes it.
	if err := createContainer(ctx, ag, "sleeper", testSpec("sleep", "1000"), ctrOpts{}); err != nil {
		t.Fatalf("CreateContainer sleeper: %v", err)
	}
	if err := ag.StartContainer(ctx, "sleeper"); err != nil {
		t.Fatalf("StartContainer sleeper: %v", err)
	}

	t.Run("Exec", func(t *testing.T) {
		if err := execProcess(ctx, ag, "sleeper", "e1", false, "sh", "-c", "echo exec-out; hostname"); err != nil {
			t.Fatalf("ExecProcess: %v", err)
		}
		if out := readAll(ctx, t, ag, "sleeper", "e1", false); out != "exec-out\nkasa-pod\n" {
			t.Errorf("exec stdout %q (hostname from CreateSandbox)", out)
		}
		if code := waitExit(ctx, t, ag, "sleeper", "e1"); code != 0 {
			t.Errorf("exec exit %d", code)
		}
		if err := execProcess(ctx, ag, "sleeper", "e2", true, "tty"); err != nil {
			t.Fatalf("ExecProcess with terminal: %v", err)
		}
		if out := readAll(ctx, t, ag, "sleeper", "e2", false); !strings.HasPrefix(out, "/dev/pts/") {
			t.Errorf("exec tty output %q", out)
		}
		waitExit(ctx, t, ag, "sleeper", "e2")
		if err := execProcess(ctx, ag, "sleeper", "e1", false, "true"); !errdefs.IsAlreadyExists(err) {
			t.Errorf("duplicate exec id: %v, want AlreadyExists", err)
		}
		if err := execProcess(ctx, ag, "sleeper", "e3", false, "nope"); err == nil || !strings.Contains(err.Error(), `exec: "nope": executable file not found in $PATH`) {
			t.Errorf("exec of a missing binary: %v", err)
		}
		procs, err := ag.ListProcesses(ctx, "sleeper")
		if err != nil || len(procs) != 1 || procs[0].GetExecId() != "sleeper" || procs[0].GetPid() == 0 {
			t.Errorf("ListProcesses: %v, %v", procs, err)
		}
	})

	// The agent forgets an exec once the host removes it after collecting
	// its exit: a long-lived container's records do not grow with execs.
	t.Run("ExecsAreForgotten", func(t *testing.T) {
		before, _ := ag.GuestDetails(ctx)
		const n = 30
		for i := 0; i < n; i++ {
			id := fmt.Sprintf("f%d", i)
			if err := execProcess(ctx, ag, "sleeper", id, i%2 == 1, "echo", id); err != nil {
				t.Fatalf("ExecProcess %s: %v", id, err)
			}
			readAll(ctx, t, ag, "sleeper", id, false)
			waitExit(ctx, t, ag, "sleeper", id)
			if err := ag.RemoveProcess(ctx, "sleeper", id); err != nil {
				t.Fatalf("RemoveProcess %s: %v", id, err)
			}
			if _, err := ag.WaitProcess(ctx, "sleeper", id); !errdefs.IsNotFound(err) {
				t.Fatalf("WaitProcess after RemoveProcess: %v, want NotFound", err)
			}
			if err := ag.RemoveProcess(ctx, "sleeper", id); !errdefs.IsNotFound(err) {
				t.Fatalf("second RemoveProcess: %v, want NotFound", err)
			}
		}
		if after, _ := ag.GuestDetails(ctx); before != nil && after != nil {
			t.Logf("guest MemAvailable %d KiB before %d execs, %d KiB after", before.GetMemAvailableBytes()>>10, n, after.GetMemAvailableBytes()>>10)
		}
		if err := execProcess(ctx, ag, "sleeper", "live", false, "sleep", "1000"); err != nil {
			t.Fatal(err)
		}
		if err := ag.RemoveProcess(ctx, "sleeper", "live"); !errdefs.IsFailedPrecondition(err) {
			t.Errorf("RemoveProcess of a running exec: %v, want FailedPrecondition", err)
		}
		if err := ag.SignalProcess(ctx, "sleeper", "live", 9, false); err != nil {
			t.Fatal(err)
		}
		waitExit(ctx, t, ag, "sleeper", "live")
		if err := ag.RemoveProcess(ctx, "sleeper", "live"); err != nil {
			t.Errorf("RemoveProcess after the exit: %v", err)
		}
		if err := ag.RemoveProcess(ctx, "sleeper", ""); !errdefs.IsInvalidArgument(err) {
			t.Errorf("RemoveProcess of the init: %v, want InvalidArgument", err)
		}
	})

	t.Run("Signals", func(t *testing.T) {
		// SIGTERM reaches a process that handles it...
		script := `trap "echo got-term; exit 42" TERM; echo ready; sleep 1000 & wait`
		runContainer(ctx, t, ag, "term", testSpec("sh", "-c", script), ctrOpts{})
		readUntil(ctx, t, ag, "term", "", "ready")
		if err := ag.SignalProcess(ctx, "term", "", 15, false); err != nil {
			t.Fatalf("SIGTERM: %v", err)
		}
		if code := waitExit(ctx, t, ag, "term", ""); code != 42 {
			t.Errorf("exit %d after SIGTERM, want 42", code)
		}
		// ...and kills an exec'd one that does not (128+15).
		if err := execProcess(ctx, ag, "sleeper", "s1", false, "sleep", "1000"); err != nil {
			t.Fatal(err)
		}
		if err := ag.SignalProcess(ctx, "sleeper", "s1", 15, false); err != nil {
			t.Fatalf("SIGTERM exec: %v", err)
		}
		if code := waitExit(ctx, t, ag, "sleeper", "s1"); code != 143 {
			t.Errorf("exec exit %d after SIGTERM, want 143", code)
		}
		if err := ag.SignalProcess(ctx, "sleeper", "s1", 15, false); !errdefs.IsNotFound(err) {
			t.Errorf("signal to an exited process: %v, want NotFound", err)
		}
		// SIGKILL to every process of the container.
		runContainer(ctx, t, ag, "kill", testSpec("sh", "-c", "sleep 1000 & sleep 1000 & echo ready; wait"), ctrOpts{})
		readUntil(ctx, t, ag, "kill", "", "ready")
		if err := ag.SignalProcess(ctx, "kill", "", 9, true); err != nil {
			t.Fatalf("SIGKILL all: %v", err)
		}
		if code := waitExit(ctx, t, ag, "kill", ""); code != 137 {
			t.Errorf("exit %d after SIGKILL, want 137", code)
		}
	})

	t.Run("PauseResume", func(t *testing.T) {
		if err := ag.PauseContainer(ctx, "sleeper"); err != nil {
			t.Fatalf("PauseContainer: %v", err)
		}
		if err := ag.PauseContainer(ctx, "sleeper"); !errdefs.IsFailedPrecondition(err) {
			t.Errorf("second PauseContainer: %v, want FailedPrecondition", err)
		}
		if err := execProcess(ctx, ag, "sleeper", "p1", false, "true"); !errdefs.IsFailedPrecondition(err) {
			t.Errorf("exec into a paused container: %v, want FailedPrecondition", err)
		}
		if out := probe(ctx, t, ag, "cat /host/cgroup/kasa/sleeper/cgroup.freeze"); out != "1\n" {
			t.Errorf("cgroup.freeze of the paused container: %q", out)
		}
		if err := ag.ResumeContainer(ctx, "sleeper"); err != nil {
			t.Fatalf("ResumeContainer: %v", err)
		}
		if err := ag.ResumeContainer(ctx, "sleeper"); !errdefs.IsFailedPrecondition(err) {
			t.Errorf("second ResumeContainer: %v, want FailedPrecondition", err)
		}
		if err := execProcess(ctx, ag, "sleeper", "p2", false, "true"); err != nil {
			t.Fatalf("exec after resume: %v", err)
		}
		waitExit(ctx, t, ag, "sleeper", "p2")
	})

	t.Run("StatsAndUpdate", func(t *testing.T) {
		st, err := ag.StatsContainer(ctx, "sleeper")
		if err != nil {
			t.Fatalf("StatsContainer: %v", err)
		}
		cg := st.GetCgroupStats()
		if cg.GetCpu().GetUsageTotalNsec() == 0 || cg.GetMemory().GetUsageBytes() == 0 || cg.GetPids().GetCurrent() == 0 {
			t.Errorf("stats have zeros: cpu %d ns, memory %d B, pids %d", cg.GetCpu().GetUsageTotalNsec(), cg.GetMemory().GetUsageBytes(), cg.GetPids().GetCurrent())
		}
		if len(cg.GetMemory().GetStat()) == 0 || cg.GetMemory().GetEvents() == nil || st.GetTimestamp() == nil {
			t.Errorf("stats lack memory.stat, memory.events or the timestamp: %v", st)
		}
		limit, pids := int64(64<<20), int64(50)
		err = ag.UpdateContainer(ctx, "sleeper", &api.LinuxResources{Memory: &api.LinuxMemory{Limit: &limit}, Pids: &api.LinuxPids{Limit: &pids}})
		if err != nil {
			t.Fatalf("UpdateContainer: %v", err)
		}
		st, err = ag.StatsContainer(ctx, "sleeper")
		if err != nil {
			t.Fatal(err)
		}
		if got := st.GetCgroupStats().GetMemory().GetLimitBytes(); got != uint64(limit) {
			t.Errorf("memory limit after update %d, want %d", got, limit)
		}
		if got := st.GetCgroupStats().GetPids().GetLimit(); got != uint64(pids) {
			t.Errorf("pids limit after update %d, want %d", got, pids)
		}
		// The container still execs after an update.
		if err := execProcess(ctx, ag, "sleeper", "u1", false, "true"); err != nil {
			t.Fatalf("exec after update: %v", err)
		}
		waitExit(ctx, t, ag, "sleeper", "u1")
	})

	t.Run("OOM", func(t *testing.T) {
		s := testSpec("sh", "-c", "head -c 128m /dev/zero | tail")
		limit := int64(32 << 20)
		s.Linux.Resources.Memory = &specs.LinuxMemory{Limit: &limit}
		runContainer(ctx, t, ag, "hog", s, ctrOpts{})
		octx, ocancel := context.WithTimeout(ctx, 2*time.Minute)
		defer ocancel()
		got, err := ag.GetOOMEvent(octx)
		if err != nil || got != "hog" {
			t.Fatalf("GetOOMEvent: %q, %v", got, err)
		}
		if code := waitExit(ctx, t, ag, "hog", ""); code == 0 {
			t.Errorf("memory hog exited 0")
		}
		st, err := ag.StatsContainer(ctx, "hog")
		if err != nil || st.GetCgroupStats().GetMemory().GetOomKillCount() == 0 {
			t.Errorf("stats after OOM: oom_kill %d, %v", st.GetCgroupStats().GetMemory().GetOomKillCount(), err)
		}
	})

	t.Run("MissingBinary", func(t *testing.T) {
		s := testSpec("nope")
		s.Root.Path = "/run/kasa/test/nope-rootfs"
		bind := []*api.Storage{{Driver: api.StorageDriver_STORAGE_DRIVER_BIND, Source: guestRootfs, MountPoint: s.Root.Path}}
		err := createContainer(ctx, ag, "nope", s, ctrOpts{storages: bind})
		if err == nil || !strings.Contains(err.Error(), `exec: "nope": executable file not found in $PATH`) {
			t.Fatalf("CreateContainer of a missing binary: %v", err)
		}
		// Nothing of it is left: the id is free again, its storage unmounted.
		if _, err := ag.WaitProcess(ctx, "nope", ""); !errdefs.IsNotFound(err) {
			t.Errorf("WaitProcess after the failed create: %v, want NotFound", err)
		}
		if out := probe(ctx, t, ag, "ls /host/kasa/test/nope-rootfs | wc -l"); out != "0\n" {
			t.Errorf("storage of the failed container still mounted: %q entries", out)
		}
		runContainer(ctx, t, ag, "nope", testSpec("true"), ctrOpts{})
		waitExit(ctx, t, ag, "nope", "")
	})

	t.Run("BadRequests", func(t *testing.T) {
		if err := ag.CreateContainer(ctx, &api.CreateContainerRequest{ContainerId: "bad", OciSpecJson: []byte("{")}); !errdefs.IsInvalidArgument(err) {
			t.Errorf("malformed spec: %v, want InvalidArgument", err)
		}
		if err := createContainer(ctx, ag, "bad/id", testSpec("true"), ctrOpts{}); !errdefs.IsInvalidArgument(err) {
			t.Errorf("bad id: %v, want InvalidArgument", err)
		}
		if err := ag.StartContainer(ctx, "ghost"); !errdefs.IsNotFound(err) {
			t.Errorf("StartContainer of an unknown container: %v, want NotFound", err)
		}
		if err := ag.RemoveContainer(ctx, "ghost", 0); !errdefs.IsNotFound(err) {
			t.Errorf("RemoveContainer of an unknown container: %v, want NotFound", err)
		}
		err := ag.CopyFile(ctx, &api.CopyFileRequest{Path: "/etc/passwd", FileMode: 0o644, Data: []byte("x"), FileSize: 1})
		if !errdefs.IsInvalidArgument(err) {
			t.Errorf("CopyFile outside the sandbox's directories: %v, want InvalidArgument", err)
		}
	})

	t.Run("SandboxAndStorages", func(t *testing.T) {
		// A container on a bind storage of the rootfs; the storage goes away with it.
		s := testSpec("sh", "-c", "echo data > /tmp/f && cat /tmp/f")
		s.Root.Path = "/run/kasa/test/bound-rootfs"
		bind := []*api.Storage{{Driver: api.StorageDriver_STORAGE_DRIVER_BIND, Source: guestRootfs, MountPoint: s.Root.Path}}
		runContainer(ctx, t, ag, "bound", s, ctrOpts{storages: bind})
		if out := readAll(ctx, t, ag, "bound", "", false); out != "data\n" {
			t.Errorf("stdout %q", out)
		}
		removeContainer(t, ag, "bound")

		// A container on an overlay of the rootfs: its writes land in the upper layer.
		for _, d := range []string{"upper", "work"} {
			if err := ag.CopyFile(ctx, &api.CopyFileRequest{Path: "/run/kasa/test/ov/" + d, FileMode: unix.S_IFDIR | 0o755, DirMode: 0o755}); err != nil {
				t.Fatal(err)
			}
		}
		s = testSpec("sh", "-c", "echo layered > /tmp/ov && cat /tmp/ov")
		s.Root.Path = "/run/kasa/test/ov/merged"
		overlay := []*api.Storage{{
			Driver: api.StorageDriver_STORAGE_DRIVER_OVERLAY, MountPoint: s.Root.Path, Fstype: "overlay",
			Options: []string{"lowerdir=" + guestRootfs, "upperdir=/run/kasa/test/ov/upper", "workdir=/run/kasa/test/ov/work"},
		}}
		runContainer(ctx, t, ag, "layered", s, ctrOpts{storages: overlay})
		if out := readAll(ctx, t, ag, "layered", "", false); out != "layered\n" {
			t.Errorf("overlay container stdout %q", out)
		}
		removeContainer(t, ag, "layered")

		out := probe(ctx, t, ag, "cat /host/etc/resolv.conf /host/etc/hosts; ls -d /host/kasa/test/emptydir; "+
			"cat /host/kasa/test/ov/upper/tmp/ov; ls /host/kasa/test/rootfs/tmp/ov /host/kasa/test/ov/merged; "+
			"ls /host/kasa/test/bound-rootfs | wc -l")
		for _, want := range []string{"nameserver 10.96.0.10\n", "options ndots:5\n", "kasa-pod", "/host/kasa/test/emptydir\n", "layered\n"} {
			if !strings.Contains(out, want) {
				t.Errorf("guest files %q lack %q", out, want)
			}
		}
		if strings.Contains(out, "/host/kasa/test/rootfs/tmp/ov\n") {
			t.Errorf("the overlay wrote through to its lower layer: %q", out)
		}
		if !strings.HasSuffix(out, "\n0\n") || strings.Contains(out, "bin\n") {
			t.Errorf("a storage is still mounted after RemoveContainer: %q", out)
		}
	})

	t.Run("RemoveLeavesNothing", func(t *testing.T) {
		for _, c := range []string{"echo", "echo2", "big", "bound", "layered", "exit3", "cat", "tty", "term", "kill", "hog", "nope"} {
			removeContainer(t, ag, c)
		}
		if _, err := ag.WaitProcess(ctx, "echo", ""); !errdefs.IsNotFound(err) {
			t.Errorf("WaitProcess after RemoveContainer: %v, want NotFound", err)
		}
		out := probe(ctx, t, ag, `cd /host/cgroup/kasa && for d in *; do [ -d "$d" ] && echo "$d"; done; ls /host/kasa/containers`)
		for _, f := range strings.Fields(out) {
			if f != "sleeper" && !strings.HasPrefix(f, "probe-") {
				t.Errorf("left behind after RemoveContainer: %q in %q", f, out)
			}
		}
	})

	// DestroySandbox kills "sleeper", unmounts the storages and powers the
	// guest off by itself.
	if err := ag.DestroySandbox(ctx); err != nil {
		t.Fatalf("DestroySandbox: %v", err)
	}
	select {
	case <-vm.Done():
	case <-time.After(15 * time.Second):
		t.Fatal("guest did not power off within 15 s of DestroySandbox")
	}
	console, _ := os.ReadFile(vm.ConsolePath())
	if !strings.Contains(string(console), `msg="container removed" component=kasa-agent container=sleeper`) {
		t.Errorf("DestroySandbox did not remove the running container; console:\n%s", console)
	}
}

//go:build integration

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/console"

	"github.com/kasa-runtime/kasa/test/ctrtest"
	"github.com/kasa-runtime/kasa/virtcontainers/portforward"
)

// startCRIHarness is a private containerd with the CRI plugin: the runtime
// handler "kata" is this build's shim with the test's guest image, CNI is a
// bridge of the harness's own, and images come from an in-process registry
// mirroring registry.k8s.io, gcr.io and docker.io, which also serves
// images: the busybox images a test adds. crictl is bin/crictl
// (hack/install-cri-tools.sh).
func startCRIHarness(t *testing.T, timeout time.Duration, mutate func(*ctrtest.Options), images ...ctrtest.ImageOptions) (*ctrtest.Containerd, context.Context) {
	t.Helper()
	dir := requireVM(t)
	repo, _ := filepath.Abs("../..")
	bin := filepath.Join(repo, "bin")
	for _, b := range []string{ctrtest.ShimKasa, "crictl"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			ctrtest.Missing(t, "%s/%s (make build; hack/install-cri-tools.sh bin)", bin, b)
		}
	}
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		ctrtest.Missing(t, "CNI plugins in /usr/lib/cni (apt-get install containernetworking-plugins)")
	}
	conf := filepath.Join(t.TempDir(), "configuration.toml")
	body := fmt.Sprintf("[hypervisor.qemu]\nkernel = %q\ninitrd = %q\nenable_annotations = [\"default_memory\", \"default_vcpus\"]\n\n[agent.kata]\ndial_timeout = 60\n",
		filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd.img"))
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	reg, err := ctrtest.StartCRIRegistry(repo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	for _, img := range images {
		if err := reg.PushBusybox(img); err != nil {
			t.Fatal(err)
		}
	}
	opts := ctrtest.Options{
		BinDirs: []string{bin}, KasaConfigPath: conf, CRI: true, Crictl: filepath.Join(bin, "crictl"),
		SandboxImage: ctrtest.PauseImage, RegistryMirror: reg.Endpoint(), Debug: os.Getenv("KASA_TEST_DEBUG") != "",
	}
	if mutate != nil {
		mutate(&opts)
	}
	c := ctrtest.Start(t, opts)
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	t.Cleanup(cancel)
	return c, ctx
}

// criEndpoint is a CRI runtime the tests drive with crictl: a private
// containerd (*ctrtest.Containerd) or CRI-O (*ctrtest.CRIO).
type criEndpoint interface {
	Crictl(ctx context.Context, args ...string) (ctrtest.Result, error)
	CrictlOK(ctx context.Context, args ...string) (string, error)
	WriteJSON(name string, v any) (string, error)
}

// crictl runs crictl and fails the test if it fails.
func crictl(t *testing.T, ctx context.Context, c criEndpoint, args ...string) string {
	t.Helper()
	out, err := c.CrictlOK(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// runPod runs a pod with the "kata" handler from cfg and returns its id.
func runPod(t *testing.T, ctx context.Context, c criEndpoint, cfg map[string]any) string {
	t.Helper()
	name := cfg["metadata"].(map[string]any)["name"].(string)
	p, err := c.WriteJSON(name+"-pod.json", cfg)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	id := crictl(t, ctx, c, "runp", "--runtime", "kata", p)
	t.Logf("pod %s (%s) ready after %v", name, id[:12], time.Since(start).Round(time.Millisecond))
	return id
}

// startContainer creates and starts a container in pod podID and returns
// its id.
func startContainer(t *testing.T, ctx context.Context, c criEndpoint, podID string, podCfg, cfg map[string]any) string {
	t.Helper()
	name := cfg["metadata"].(map[string]any)["name"].(string)
	// As the kubelet does, the container gets the pod's namespace options,
	// beside the security context of its own.
	if sc, ok := podCfg["linux"].(map[string]any)["security_context"]; ok {
		linux, _ := cfg["linux"].(map[string]any)
		if linux == nil {
			linux = map[string]any{}
			cfg["linux"] = linux
		}
		own, _ := linux["security_context"].(map[string]any)
		if own == nil {
			own = map[string]any{}
			linux["security_context"] = own
		}
		own["namespace_options"] = sc.(map[string]any)["namespace_options"]
	}
	podPath, err := c.WriteJSON(name+"-pod.json", podCfg)
	if err != nil {
		t.Fatal(err)
	}
	ctrPath, err := c.WriteJSON(name+"-ctr.json", cfg)
	if err != nil {
		t.Fatal(err)
	}
	id := crictl(t, ctx, c, "create", "--with-pull", podID, ctrPath, podPath)
	crictl(t, ctx, c, "start", id)
	return id
}

func containerConfig(name, image string, args []string, mounts ...map[string]any) map[string]any {
	cfg := map[string]any{
		"metadata": map[string]any{"name": name},
		"image":    map[string]any{"image": image},
		"log_path": name + ".log",
		"linux":    map[string]any{},
	}
	if args != nil {
		cfg["command"] = args
	}
	if len(mounts) > 0 {
		cfg["mounts"] = mounts
	}
	return cfg
}

// podIP is the pod's IP from crictl inspectp.
func podIP(t *testing.T, ctx context.Context, c criEndpoint, podID string) string {
	t.Helper()
	var st struct {
		Status struct {
			Network struct {
				IP string `json:"ip"`
			} `json:"network"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(crictl(t, ctx, c, "inspectp", podID)), &st); err != nil {
		t.Fatal(err)
	}
	if st.Status.Network.IP == "" {
		t.Fatal("pod has no IP")
	}
	return st.Status.Network.IP
}

// httpGet fetches url, retrying for up to 30s while the server starts.
func httpGet(ctx context.Context, url string) (string, error) {
	client := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get(url)
		if err == nil {
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode == 200 {
				return string(b), nil
			}
			if err == nil {
				err = fmt.Errorf("%s", resp.Status)
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return "", fmt.Errorf("GET %s: %w", url, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// TestCRIPod runs one pod of two containers through CRI with the "kata"
// handler and checks what a pod promises: its own VM, volumes shared
// between its containers, a read-only hostPath, the pod IP reachable from
// the host, localhost between containers, DNS and hostname from the CRI
// config, one /dev/shm and one IPC namespace, and nothing left after
// stopp/rmp. On containerd 1.6 and 2.x.
func TestCRIPod(t *testing.T) { onContainerds(t, testCRIPod) }

func testCRIPod(t *testing.T, ctd containerdUnderTest) {
	c, ctx := startCRIHarness(t, 6*time.Minute, ctd.opts)
	emptyDir := t.TempDir()
	hostPath := t.TempDir()
	if err := os.WriteFile(filepath.Join(hostPath, "config.txt"), []byte("from the node\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	podCfg := ctrtest.PodConfig("web")
	podID := runPod(t, ctx, c, podCfg)
	web := startContainer(t, ctx, c, podID, podCfg, containerConfig("httpd", ctrtest.WebServerImage, nil,
		map[string]any{"container_path": "/shared", "host_path": emptyDir}))
	tool := startContainer(t, ctx, c, podID, podCfg, containerConfig("tool", ctrtest.BusyboxImage, []string{"sleep", "3600"},
		map[string]any{"container_path": "/shared", "host_path": emptyDir},
		map[string]any{"container_path": "/config", "host_path": hostPath, "readonly": true}))

	inPod := func(t *testing.T, id string, cmd ...string) string {
		t.Helper()
		return crictl(t, ctx, c, append([]string{"exec", "--sync", "--timeout", "60", id}, cmd...)...)
	}

	t.Run("own kernel", func(t *testing.T) {
		host, _ := os.ReadFile("/proc/sys/kernel/osrelease")
		if guest := inPod(t, tool, "uname", "-r"); guest == strings.TrimSpace(string(host)) || guest == "" {
			t.Errorf("container kernel %q, host kernel %q: not in a VM", guest, host)
		}
	})
	t.Run("no debug console by default", func(t *testing.T) { assertDebugConsoleRefused(t, ctx, podID) })
	t.Run("guest log in containerd's log", func(t *testing.T) {
		assertGuestLog(t, c.LogPath, map[string]*regexp.Regexp{"agent": guestLogLine("container created container="+tool, podID, "agent")})
	})
	t.Run("pod IP from the host", func(t *testing.T) {
		body, err := httpGet(ctx, "http://"+podIP(t, ctx, c, podID)+"/")
		if err != nil || body != ctrtest.WebServerBody {
			t.Errorf("page %q, %v; want %q", body, err, ctrtest.WebServerBody)
		}
	})
	t.Run("localhost between containers", func(t *testing.T) {
		if body := inPod(t, tool, "wget", "-q", "-O", "-", "http://127.0.0.1:80/"); body+"\n" != ctrtest.WebServerBody {
			t.Errorf("page over localhost %q, want %q", body, ctrtest.WebServerBody)
		}
	})
	t.Run("emptyDir shared", func(t *testing.T) {
		inPod(t, web, "sh", "-c", "echo written-by-httpd > /shared/note")
		if got := inPod(t, tool, "cat", "/shared/note"); got != "written-by-httpd" {
			t.Errorf("the other container reads %q", got)
		}
	})
	t.Run("read-only hostPath", func(t *testing.T) {
		if got := inPod(t, tool, "cat", "/config/config.txt"); got != "from the node" {
			t.Errorf("read %q", got)
		}
		res, err := c.Crictl(ctx, "exec", "--sync", tool, "sh", "-c", "echo x > /config/new")
		if err != nil || res.ExitCode == 0 {
			t.Errorf("writing to a read-only hostPath: %v %v", res, err)
		}
		if _, err := os.Stat(filepath.Join(hostPath, "new")); err == nil {
			t.Error("a file appeared in the read-only hostPath")
		}
	})
	t.Run("DNS and hostname", func(t *testing.T) {
		resolv := inPod(t, tool, "cat", "/etc/resolv.conf")
		for _, want := range []string{"nameserver 10.96.0.10", "search kasatest.svc.cluster.local", "options ndots:5"} {
			if !strings.Contains(resolv, want) {
				t.Errorf("resolv.conf %q lacks %q", resolv, want)
			}
		}
		if h := inPod(t, tool, "hostname"); h != "web" {
			t.Errorf("hostname %q, want web", h)
		}
	})
	t.Run("one shm and IPC namespace per pod", func(t *testing.T) {
		inPod(t, web, "sh", "-c", "echo shm-note > /dev/shm/note")
		if got := inPod(t, tool, "cat", "/dev/shm/note"); got != "shm-note" {
			t.Errorf("/dev/shm not shared: %q", got)
		}
		if a, b := inPod(t, web, "readlink", "/proc/self/ns/ipc"), inPod(t, tool, "readlink", "/proc/self/ns/ipc"); a != b {
			t.Errorf("IPC namespaces differ: %s, %s", a, b)
		}
		if a, b := inPod(t, web, "readlink", "/proc/self/ns/pid"), inPod(t, tool, "readlink", "/proc/self/ns/pid"); a == b {
			t.Errorf("PID namespace shared without shareProcessNamespace: %s", a)
		}
	})
	var early string
	t.Run("stop right after start reaches PID 1's handler", func(t *testing.T) {
		// The SIGTERM of a stop issued as soon as the container runs must
		// not be dropped while its shell, PID 1 of its namespace, has yet
		// to install the trap: the container then exits 42, not 137 from
		// the SIGKILL at the end of the grace period.
		early = startContainer(t, ctx, c, podID, podCfg, containerConfig("early", ctrtest.BusyboxImage,
			[]string{"sh", "-c", "trap 'exit 42' TERM; while :; do sleep 1; done"}))
		crictl(t, ctx, c, "stop", "--timeout", "60", early)
		if state, code := containerStatus(t, ctx, c, early); code != 42 {
			t.Errorf("%s with exit code %d, want 42 from the TERM trap", state, code)
		}
	})

	crictl(t, ctx, c, "stopp", podID)
	crictl(t, ctx, c, "rmp", podID)
	ctrtest.AssertNoLeftovers(t, c, podID, web, tool, early)
	assertNoTaps(t)
}

// TestCRISharedPIDNamespace: a pod with shareProcessNamespace sees the
// agent's pause as PID 1, and no pause binary came from the image.
func TestCRISharedPIDNamespace(t *testing.T) {
	c, ctx := startCRIHarness(t, 4*time.Minute, nil)
	podCfg := ctrtest.PodConfig("sharedpid")
	podCfg["linux"] = map[string]any{"security_context": map[string]any{"namespace_options": map[string]any{"pid": 0}}}
	podID := runPod(t, ctx, c, podCfg)
	id := startContainer(t, ctx, c, podID, podCfg, containerConfig("ps", ctrtest.BusyboxImage, []string{"sleep", "3600"}))
	ps := crictl(t, ctx, c, "exec", "--sync", id, "ps", "-o", "pid,args")
	if !regexp.MustCompile(`(?m)^\s*1\s+/pause$`).MatchString(ps) {
		t.Errorf("PID 1 of the pod is not pause:\n%s", ps)
	}
	crictl(t, ctx, c, "rmp", "--force", podID)
	ctrtest.AssertNoLeftovers(t, c, podID, id)
}

// TestCRIFailures: bad input fails cleanly and leaves nothing.
func TestCRIFailures(t *testing.T) {
	t.Run("refused annotation", func(t *testing.T) {
		c, ctx := startCRIHarness(t, 3*time.Minute, nil)
		podCfg := ctrtest.PodConfig("badmem")
		podCfg["annotations"] = map[string]string{"io.katacontainers.config.hypervisor.default_memory": "lots"}
		p, _ := c.WriteJSON("badmem.json", podCfg)
		res, err := c.Crictl(ctx, "runp", "--runtime", "kata", p)
		if err != nil || res.ExitCode == 0 || !strings.Contains(res.Stderr, "default_memory") {
			t.Errorf("runp with default_memory=lots: %v %v, want an error naming default_memory", res, err)
		}
		ctrtest.AssertNoLeftovers(t, c)
		assertNoTaps(t)
		if out, _ := c.CrictlOK(ctx, "pods", "-q"); out != "" {
			t.Errorf("pods left: %s", out)
		}
	})
	t.Run("hostNetwork and hostIPC refused", func(t *testing.T) {
		c, ctx := startCRIHarness(t, 3*time.Minute, nil)
		podCfg := ctrtest.PodConfig("hostns")
		// NODE (2) for network and IPC, as the kubelet sends for hostNetwork and hostIPC.
		podCfg["linux"] = map[string]any{"security_context": map[string]any{"namespace_options": map[string]any{"network": 2, "pid": 1, "ipc": 2}}}
		p, _ := c.WriteJSON("hostns.json", podCfg)
		res, err := c.Crictl(ctx, "runp", "--runtime", "kata", p)
		if err != nil || res.ExitCode == 0 || !strings.Contains(res.Stderr, "hostNetwork, hostIPC") || !strings.Contains(res.Stderr, "allow_host_namespaces") {
			t.Errorf("runp of a hostNetwork+hostIPC pod: %v %v, want a refusal naming both and the opt-in", res, err)
		}
		ctrtest.AssertNoLeftovers(t, c)
		assertNoTaps(t)
		if out, _ := c.CrictlOK(ctx, "pods", "-q"); out != "" {
			t.Errorf("pods left: %s", out)
		}
	})
	t.Run("CNI failure", func(t *testing.T) {
		// The bridge works, then tuning fails on a sysctl that does not
		// exist: ADD fails, DEL succeeds, as with a real misconfiguration.
		cni := t.TempDir()
		broken := `{"cniVersion": "1.0.0", "name": "broken", "plugins": [
  {"type": "bridge", "bridge": "kbrfail` + newID(t)[3:7] + `", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.254.0/24"}]]}},
  {"type": "tuning", "sysctl": {"net.kasa.no_such_sysctl": "1"}}]}`
		if err := os.WriteFile(filepath.Join(cni, "10-broken.conflist"), []byte(broken), 0o644); err != nil {
			t.Fatal(err)
		}
		c, ctx := startCRIHarness(t, 3*time.Minute, func(o *ctrtest.Options) { o.CNIConfDir = cni })
		p, _ := c.WriteJSON("nonet.json", ctrtest.PodConfig("nonet"))
		res, err := c.Crictl(ctx, "runp", "--runtime", "kata", p)
		if err != nil || res.ExitCode == 0 || !strings.Contains(res.Stderr, "no_such_sysctl") {
			t.Errorf("runp with a broken CNI: %v %v, want an error naming the sysctl", res, err)
		}
		ctrtest.AssertNoLeftovers(t, c)
		if out, _ := c.CrictlOK(ctx, "pods", "-q"); out != "" {
			t.Errorf("pods left: %s", out)
		}
	})
	t.Run("missing image", func(t *testing.T) {
		c, ctx := startCRIHarness(t, 3*time.Minute, nil)
		podCfg := ctrtest.PodConfig("noimage")
		podID := runPod(t, ctx, c, podCfg)
		podPath, _ := c.WriteJSON("noimage-pod.json", podCfg)
		ctrPath, _ := c.WriteJSON("noimage-ctr.json", containerConfig("ghost", "registry.k8s.io/kasa/no-such-image:1", nil))
		res, err := c.Crictl(ctx, "create", "--with-pull", podID, ctrPath, podPath)
		if err != nil || res.ExitCode == 0 || !strings.Contains(res.Stderr, "no-such-image") {
			t.Errorf("create with a missing image: %v %v", res, err)
		}
		if out, _ := c.CrictlOK(ctx, "ps", "-a", "-q"); out != "" {
			t.Errorf("containers left: %s", out)
		}
		// The pod is unharmed: a container still runs in it.
		id := startContainer(t, ctx, c, podID, podCfg, containerConfig("after", ctrtest.BusyboxImage, []string{"sleep", "60"}))
		if out := crictl(t, ctx, c, "exec", "--sync", id, "echo", "ok"); out != "ok" {
			t.Errorf("exec after a failed create: %q", out)
		}
		crictl(t, ctx, c, "rmp", "--force", podID)
		ctrtest.AssertNoLeftovers(t, c, podID, id)
	})
}

// assertNoTaps fails if a Kasa tap is left in the host's network
// namespace (the pod's namespaces are gone with their pods).
func assertNoTaps(t *testing.T) {
	t.Helper()
	out, err := exec.Command("ip", "-o", "link", "show").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "_kasa") {
			t.Errorf("tap left: %s", l)
		}
	}
}

// TestCRICrictl walks crictl's pod and container commands through the
// "kata" handler: runp, create, start, exec, exec -it, logs, attach,
// inspect, inspectp, stats, stop, rm, stopp, rmp. On containerd 1.6 and 2.x.
func TestCRICrictl(t *testing.T) { onContainerds(t, testCRICrictl) }

func testCRICrictl(t *testing.T, ctd containerdUnderTest) {
	c, ctx := startCRIHarness(t, 5*time.Minute, ctd.opts)
	podCfg := ctrtest.PodConfig("crictl")
	podCfg["log_directory"] = t.TempDir()
	podID := runPod(t, ctx, c, podCfg)

	var pod struct {
		Status struct{ State string } `json:"status"`
	}
	if err := json.Unmarshal([]byte(crictl(t, ctx, c, "inspectp", podID)), &pod); err != nil || pod.Status.State != "SANDBOX_READY" {
		t.Errorf("inspectp: state %q, %v", pod.Status.State, err)
	}

	ticker := startContainer(t, ctx, c, podID, podCfg, containerConfig("ticker", ctrtest.BusyboxImage,
		[]string{"sh", "-c", "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.5; done"}))
	reader := containerConfig("reader", ctrtest.BusyboxImage, []string{"sh", "-c", "read line; echo got-$line"})
	reader["stdin"], reader["stdin_once"] = true, true
	readerID := startContainer(t, ctx, c, podID, podCfg, reader)

	t.Run("inspect", func(t *testing.T) {
		var ctr struct {
			Status struct {
				State string `json:"state"`
			} `json:"status"`
		}
		if err := json.Unmarshal([]byte(crictl(t, ctx, c, "inspect", ticker)), &ctr); err != nil || ctr.Status.State != "CONTAINER_RUNNING" {
			t.Errorf("inspect: state %q, %v", ctr.Status.State, err)
		}
	})
	t.Run("exec", func(t *testing.T) {
		if out := crictl(t, ctx, c, "exec", ticker, "sh", "-c", "echo out; echo err >&2; exit 0"); !strings.Contains(out, "out") {
			t.Errorf("exec output %q", out)
		}
		res, err := c.Crictl(ctx, "exec", ticker, "sh", "-c", "exit 7")
		if err != nil || res.ExitCode == 0 || !strings.Contains(res.Stderr, "exit code 7") {
			t.Errorf("exec exit status: %v %v, want exit code 7", res, err)
		}
	})
	t.Run("exec -it", func(t *testing.T) {
		// crictl wants a terminal on its stdin for -t.
		pty, tty, err := console.NewPty()
		if err != nil {
			t.Fatal(err)
		}
		defer pty.Close()
		ttyFile, err := os.OpenFile(tty, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer ttyFile.Close()
		cmd := c.CrictlCommand(ctx, "exec", "-i", "-t", ticker, "sh")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = ttyFile, ttyFile, ttyFile
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		ttyFile.Close()
		io.WriteString(pty, "echo in-tty $(tty)\rexit\r")
		var out strings.Builder
		copied := make(chan struct{})
		go func() { io.Copy(&out, pty); close(copied) }()
		err = cmd.Wait()
		pty.Close()
		<-copied
		if err != nil || !strings.Contains(out.String(), "in-tty /dev/pts/") {
			t.Errorf("exec -it: %v, output %q", err, out.String())
		}
	})
	t.Run("logs", func(t *testing.T) {
		time.Sleep(time.Second)
		if out := crictl(t, ctx, c, "logs", ticker); !strings.Contains(out, "tick 1\n") {
			t.Errorf("logs %q lack tick 1", out)
		}
	})
	t.Run("attach", func(t *testing.T) {
		// crictl 1.30 loses attach's default transport: name it.
		res, err := c.CrictlStdin(ctx, strings.NewReader("through-attach\n"), "attach", "--transport", "spdy", "-i", readerID)
		if err != nil || !strings.Contains(res.Stdout, "got-through-attach") {
			t.Errorf("attach: %v %v", res, err)
		}
	})
	t.Run("stats", func(t *testing.T) {
		var st struct {
			Stats []struct {
				Attributes struct{ ID string } `json:"attributes"`
				CPU        struct {
					UsageCoreNanoSeconds struct{ Value string } `json:"usageCoreNanoSeconds"`
				} `json:"cpu"`
				Memory struct {
					WorkingSetBytes struct{ Value string } `json:"workingSetBytes"`
				} `json:"memory"`
			} `json:"stats"`
		}
		out := crictl(t, ctx, c, "stats", "-o", "json", "--id", ticker)
		if err := json.Unmarshal([]byte(out), &st); err != nil || len(st.Stats) != 1 {
			t.Fatalf("stats %s: %v", out, err)
		}
		if s := st.Stats[0]; s.CPU.UsageCoreNanoSeconds.Value == "" || s.CPU.UsageCoreNanoSeconds.Value == "0" || s.Memory.WorkingSetBytes.Value == "" || s.Memory.WorkingSetBytes.Value == "0" {
			t.Errorf("stats without figures: %s", out)
			for _, l := range strings.Split(c.LogTail(3000), "\n") {
				if strings.Contains(l, "etrics") || strings.Contains(l, "tats") {
					t.Log(l)
				}
			}
		}
	})
	t.Run("stop and rm", func(t *testing.T) {
		crictl(t, ctx, c, "stop", "--timeout", "2", ticker)
		var ctr struct {
			Status struct {
				State string `json:"state"`
			} `json:"status"`
		}
		if err := json.Unmarshal([]byte(crictl(t, ctx, c, "inspect", ticker)), &ctr); err != nil || ctr.Status.State != "CONTAINER_EXITED" {
			t.Errorf("after stop: state %q, %v", ctr.Status.State, err)
		}
		crictl(t, ctx, c, "rm", ticker)
		if out := crictl(t, ctx, c, "ps", "-a", "-q", "--id", ticker); out != "" {
			t.Errorf("container still listed: %s", out)
		}
	})
	crictl(t, ctx, c, "stopp", podID)
	crictl(t, ctx, c, "rmp", podID)
	ctrtest.AssertNoLeftovers(t, c, podID, ticker, readerID)
}

// critestFocus is the critest (cri-tools v1.30) focus set CI runs against
// the "kata" handler: pod sandboxes, basic container operations and
// execSync, volumes, logs, streaming and networking. (Its "Container Mount
// Readonly" specs pass their checks, but their cleanup removes a mount
// point below the volume's source while the pod runs, which the share's
// copy in the node's namespace keeps busy: see the README's volumes.)
const critestFocus = `\[k8s\.io\] (PodSandbox runtime should support basic operations|Container runtime should support (basic operations|adding volume|log)|Streaming|Networking)`

// critestSkip: a hostNetwork pod is refused by the kata handler
// (allow_host_namespaces is off), so port forwarding in one cannot run.
const critestSkip = `portforward in host network`

// TestCRITest runs critest's focus set with the "kata" runtime handler, on
// containerd 1.6 and 2.x.
func TestCRITest(t *testing.T) { onContainerds(t, testCRITest) }

func testCRITest(t *testing.T, ctd containerdUnderTest) {
	repo, _ := filepath.Abs("../..")
	critest := filepath.Join(repo, "bin", "critest")
	if _, err := os.Stat(critest); err != nil {
		ctrtest.Missing(t, "%s (hack/install-cri-tools.sh bin)", critest)
	}
	c, ctx := startCRIHarness(t, 20*time.Minute, ctd.opts)
	skip := critestSkip
	args := []string{
		"-runtime-endpoint", "unix://" + c.Address, "-image-endpoint", "unix://" + c.Address,
		"-runtime-handler", "kata", "-ginkgo.focus", critestFocus, "-ginkgo.skip", skip,
		"-ginkgo.no-color", "-ginkgo.v",
	}
	cmd := exec.CommandContext(ctx, critest, args...)
	cmd.Dir = t.TempDir()
	out, err := cmd.CombinedOutput()
	ran := regexp.MustCompile(`Ran (\d+) of (\d+) Specs`).FindStringSubmatch(string(out))
	passed := regexp.MustCompile(`(\d+) Passed \| (\d+) Failed \| (\d+) Pending \| (\d+) Skipped`).FindStringSubmatch(string(out))
	if err != nil || ran == nil || passed == nil || passed[2] != "0" {
		t.Fatalf("critest: %v\n%s", err, out)
	}
	if ran[1] == "0" {
		t.Fatalf("critest ran no spec:\n%s", out)
	}
	t.Logf("critest v1.30 with handler kata on containerd %s: ran %s of %s specs: %s passed, %s failed, %s skipped", c.Release.Text, ran[1], ran[2], passed[1], passed[2], passed[4])
	ctrtest.AssertNoLeftovers(t, c)
}

// TestRegisterContainerd: hack/register-containerd.sh leaves a containerd
// whose CRI plugin has the kata handler, keeping what config.toml set: a
// version 2 config.toml with Debian's containerd 1.6, a version 3 one
// (io.containerd.cri.v1.runtime) with containerd 2.x, and none at all, when
// the containerd on PATH picks the format.
func TestRegisterContainerd(t *testing.T) {
	ctrtest.Require(t, "containerd")
	repo, _ := filepath.Abs("../..")
	ctrd1, _ := exec.LookPath("containerd")
	ctrd2 := containerd2Path()
	for _, tc := range []struct {
		name       string
		containerd string
		version    int // of the config.toml before registering; 0: none
		cri        bool
	}{
		{"1.6, config.toml without CRI", ctrd1, 2, false},
		{"1.6, config.toml with CRI", ctrd1, 2, true},
		{"1.6, no config.toml", ctrd1, 0, false},
		{"2.x, config.toml without CRI", ctrd2, 3, false},
		{"2.x, config.toml with CRI", ctrd2, 3, true},
		{"2.x, no config.toml", ctrd2, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rel, err := ctrtest.BinaryRelease(tc.containerd)
			if err != nil {
				ctrtest.Missing(t, "containerd at %s (make containerd2): %v", tc.containerd, err)
			}
			dir, err := os.MkdirTemp("", "kasa-reg")
			if err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(dir)
			// Everything of this containerd in dir; 2.x's NRI off (its
			// socket is host-wide).
			private := fmt.Sprintf("root = %q\nstate = %q\n[grpc]\n  address = %q\n", dir+"/root", dir+"/state", dir+"/c.sock")
			if rel.V2() {
				private += "[plugins.\"io.containerd.nri.v1.nri\"]\n  disable = true\n"
			}
			conf := fmt.Sprintf("version = %d\n%s", tc.version, private)
			switch {
			case tc.cri && tc.version == 2:
				conf += "[plugins.\"io.containerd.grpc.v1.cri\"]\n  max_container_log_line_size = 1234\n" +
					"[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n"
			case tc.cri:
				conf += "[plugins.\"io.containerd.cri.v1.runtime\"]\n  max_container_log_line_size = 1234\n" +
					"[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n" +
					"  [plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.runc.options]\n    NoNewKeyring = true\n"
			}
			if tc.version != 0 {
				os.WriteFile(dir+"/config.toml", []byte(conf), 0o644)
			}
			for range 2 { // twice: the second run changes nothing
				cmd := exec.Command(filepath.Join(repo, "hack", "register-containerd.sh"))
				// Without a config.toml, the containerd on PATH decides.
				cmd.Env = append(os.Environ(), "CONTAINERD_DIR="+dir, "PATH="+filepath.Dir(tc.containerd)+":"+os.Getenv("PATH"))
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("register-containerd.sh: %v\n%s", err, out)
				}
			}
			written, _ := os.ReadFile(dir + "/config.toml")
			imported, _ := os.ReadFile(dir + "/conf.d/kasa.toml")
			if want := fmt.Sprintf("version = %d", max(tc.version, map[bool]int{false: 2, true: 3}[rel.V2()])); !strings.Contains(string(written), want) ||
				rel.V2() != strings.Contains(string(written)+string(imported), "io.containerd.cri.v1.runtime") {
				t.Errorf("config.toml for containerd %s:\n%s\nconf.d/kasa.toml:\n%s", rel.Text, written, imported)
			}
			if tc.version == 0 {
				// The config.toml the script made, made private.
				os.WriteFile(dir+"/config.toml", append(written, private...), 0o644)
			}
			ctd := exec.Command(tc.containerd, "--config", dir+"/config.toml")
			ctd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			if err := ctd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { ctd.Process.Kill(); ctd.Wait() }()
			var info struct {
				Config struct {
					MaxContainerLogLineSize int `json:"maxContainerLogLineSize"` // 2.x
					MaxContainerLogSize     int `json:"maxContainerLogSize"`     // 1.6
					Containerd              struct {
						Runtimes map[string]struct {
							RuntimeType    string         `json:"runtimeType"`
							PodAnnotations []string       `json:"PodAnnotations"`
							Options        map[string]any `json:"options"`
						} `json:"runtimes"`
					} `json:"containerd"`
				} `json:"config"`
			}
			var out []byte
			for i := 0; i < 50; i++ {
				time.Sleep(100 * time.Millisecond)
				out, err = exec.Command(filepath.Join(repo, "bin", "crictl"), "--runtime-endpoint", "unix://"+dir+"/c.sock", "info").Output()
				if err == nil {
					break
				}
			}
			if err := json.Unmarshal(out, &info); err != nil {
				t.Fatalf("crictl info: %v\n%s", err, out)
			}
			rts := info.Config.Containerd.Runtimes
			if kata := rts["kata"]; kata.RuntimeType != "io.containerd.kasa.v2" || len(kata.PodAnnotations) == 0 || rts["runc"].RuntimeType == "" {
				t.Errorf("runtimes after registering: %+v", rts)
			}
			if size := max(info.Config.MaxContainerLogLineSize, info.Config.MaxContainerLogSize); tc.cri && size != 1234 {
				t.Errorf("max_container_log_line_size %d: config.toml's CRI settings were lost", size)
			}
			if tc.cri && rel.V2() && rts["runc"].Options["NoNewKeyring"] != true {
				t.Errorf("runc options %v: config.toml's runc settings were lost", rts["runc"].Options)
			}
		})
	}
}

// TestCRIShimKilled: after a pod's shim is killed with SIGKILL, containerd
// reports the pod's containers exited, the `shim delete` it runs for the
// sandbox kills the VM and removes its state and taps (from the persisted
// state), and removing the pod leaves nothing. On containerd 1.6 and 2.x.
func TestCRIShimKilled(t *testing.T) { onContainerds(t, testCRIShimKilled) }

func testCRIShimKilled(t *testing.T, ctd containerdUnderTest) {
	c, ctx := startCRIHarness(t, 4*time.Minute, ctd.opts)
	podCfg := ctrtest.PodConfig("shimkill")
	podID := runPod(t, ctx, c, podCfg)
	id := startContainer(t, ctx, c, podID, podCfg, containerConfig("sleeper", ctrtest.BusyboxImage, []string{"sleep", "3600"}))
	// Held open, the pod's netns outlives rmp: the dead shim's port-forward
	// rules must be gone from it all the same (CleanupSandbox).
	nsf, err := os.Open(podNetNS(t, ctx, c, podID))
	if err != nil {
		t.Fatal(err)
	}
	defer nsf.Close()
	if out, err := inNetNS(nsf, "iptables", "-w", "5", "-t", "nat", "-S"); err != nil || !strings.Contains(out, portforward.Chain) {
		t.Fatalf("no %s chain in the pod's netns: %v\n%s", portforward.Chain, err, out)
	}
	out, err := exec.Command("pgrep", "-f", "containerd-shim-kasa-v2 .*-id "+podID).Output()
	pids := strings.Fields(string(out))
	if err != nil || len(pids) != 1 {
		t.Fatalf("the pod's shim: pgrep %v %q", err, out)
	}
	if err := exec.Command("kill", "-KILL", pids[0]).Run(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := containerState(t, ctx, c, id)
		if st == "CONTAINER_EXITED" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("container still %s 30s after its shim was killed", st)
		}
		time.Sleep(200 * time.Millisecond)
	}
	crictl(t, ctx, c, "rmp", "--force", podID)
	ctrtest.AssertNoLeftovers(t, c, podID, id)
	assertNoTaps(t)
	for _, ipt := range []string{"iptables", "ip6tables"} {
		if out, err := inNetNS(nsf, ipt, "-w", "5", "-t", "nat", "-S"); err != nil || strings.Contains(out, portforward.Chain) {
			t.Errorf("after the killed shim was cleaned up, %s -t nat -S: %v\n%s", ipt, err, out)
		}
	}
}

// containerStatus is the state and exit code crictl inspect reports for
// container id.
func containerStatus(t *testing.T, ctx context.Context, c criEndpoint, id string) (string, int) {
	t.Helper()
	var ctr struct {
		Status struct {
			State    string `json:"state"`
			ExitCode int    `json:"exitCode"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(crictl(t, ctx, c, "inspect", id)), &ctr); err != nil {
		t.Fatalf("crictl inspect %s: %v", id, err)
	}
	return ctr.Status.State, ctr.Status.ExitCode
}

// containerState is the state crictl inspect reports for container id.
func containerState(t *testing.T, ctx context.Context, c criEndpoint, id string) string {
	t.Helper()
	state, _ := containerStatus(t, ctx, c, id)
	return state
}

// waitExited waits for container id to exit and returns its exit code.
func waitExited(t *testing.T, ctx context.Context, c criEndpoint, id string) int {
	t.Helper()
	for {
		state, code := containerStatus(t, ctx, c, id)
		if state == "CONTAINER_EXITED" {
			return code
		}
		select {
		case <-ctx.Done():
			t.Fatalf("container %s still %s: %v", id, state, ctx.Err())
		case <-time.After(300 * time.Millisecond):
		}
	}
}

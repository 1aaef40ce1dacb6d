//go:build integration

package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kasa-runtime/kasa/metrics"
	"github.com/kasa-runtime/kasa/test/ctrtest"
	"github.com/kasa-runtime/kasa/virtcontainers/template"
)

// Pods through CRI from a VM template ([factory] enable_template): the
// first pod makes the template, the second is a clone of it too. The web
// pod answers HTTP on its IP, its containers share an emptyDir and write
// logs; the two pods have different MACs, IPs and random bytes, and neither
// sees the other's files. kill -9 of one clone's QEMU ends its container
// and not its sibling. Stopping and removing them leaves nothing, and the
// template stays for the next pod.
func TestCRIPodFromTemplate(t *testing.T) {
	templates := filepath.Join(t.TempDir(), "template")
	c, ctx := startCRIHarness(t, 6*time.Minute, func(o *ctrtest.Options) {
		b, err := os.ReadFile(o.KasaConfigPath)
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, []byte("\n[factory]\nenable_template = true\ntemplate_path = \""+templates+"\"\n")...)
		if err := os.WriteFile(o.KasaConfigPath, b, 0o644); err != nil {
			t.Fatal(err)
		}
	})
	emptyDir := t.TempDir()

	webCfg := ctrtest.PodConfig("web")
	webCfg["log_directory"] = t.TempDir()
	web := runPod(t, ctx, c, webCfg)
	httpd := startContainer(t, ctx, c, web, webCfg, containerConfig("httpd", ctrtest.WebServerImage, nil,
		map[string]any{"container_path": "/shared", "host_path": emptyDir}))
	webTool := startContainer(t, ctx, c, web, webCfg, containerConfig("tool", ctrtest.BusyboxImage,
		[]string{"sh", "-c", "echo hello-from-a-clone; exec sleep 3600"},
		map[string]any{"container_path": "/shared", "host_path": emptyDir}))
	otherCfg := ctrtest.PodConfig("other")
	other := runPod(t, ctx, c, otherCfg)
	otherTool := startContainer(t, ctx, c, other, otherCfg, containerConfig("tool", ctrtest.BusyboxImage, []string{"sleep", "3600"}))

	inPod := func(t *testing.T, id string, cmd ...string) string {
		t.Helper()
		return crictl(t, ctx, c, append([]string{"exec", "--sync", "--timeout", "60", id}, cmd...)...)
	}
	t.Run("started from the template", func(t *testing.T) {
		ms, broken, err := template.Store{Root: templates}.List()
		if err != nil || len(ms) != 1 || len(broken) != 0 {
			t.Fatalf("templates %v, broken %v, %v; want exactly one", ms, broken, err)
		}
		for _, pod := range []string{web, other} {
			pids := qemuProcesses(pod)
			if len(pids) != 1 {
				t.Fatalf("pod %s: QEMU processes %v", pod, pids)
			}
			if cmdline, _ := os.ReadFile("/proc/" + pids[0] + "/cmdline"); !strings.Contains(string(cmdline), "\x00-incoming\x00") {
				t.Errorf("pod %s did not start from the template: %q", pod, cmdline)
			}
			// Its shim's boot series say so.
			out, err := exec.CommandContext(ctx, kasaBin(t), "metrics", pod).CombinedOutput()
			if err != nil || !regexp.MustCompile(`(?m)^`+metrics.SandboxBootSeconds+`\{[^}]*start="template"`).Match(out) {
				t.Errorf("kasa metrics %s: %v, want %s with start=\"template\":\n%s", pod, err, metrics.SandboxBootSeconds, out)
			}
		}
	})
	t.Run("pod IP from the host", func(t *testing.T) {
		body, err := httpGet(ctx, "http://"+podIP(t, ctx, c, web)+"/")
		if err != nil || body != ctrtest.WebServerBody {
			t.Errorf("page %q, %v; want %q", body, err, ctrtest.WebServerBody)
		}
	})
	t.Run("emptyDir shared and logs", func(t *testing.T) {
		inPod(t, httpd, "sh", "-c", "echo written-by-httpd > /shared/note")
		if got := inPod(t, webTool, "cat", "/shared/note"); got != "written-by-httpd" {
			t.Errorf("the other container reads %q", got)
		}
		if got := crictl(t, ctx, c, "logs", webTool); !strings.Contains(got, "hello-from-a-clone") {
			t.Errorf("logs %q", got)
		}
		if res, err := c.Crictl(ctx, "exec", "--sync", otherTool, "cat", "/shared/note"); err == nil && res.ExitCode == 0 {
			t.Errorf("the other pod sees the web pod's files: %v", res)
		}
	})
	t.Run("own identity", func(t *testing.T) {
		for _, probe := range []string{"cat /sys/class/net/eth0/address", "ip -4 -o addr show eth0", "head -c 32 /dev/urandom | od -An -tx1"} {
			a, b := inPod(t, webTool, "sh", "-c", probe), inPod(t, otherTool, "sh", "-c", probe)
			if a == "" || a == b {
				t.Errorf("%q: both clones answer %q", probe, a)
			}
		}
	})

	t.Run("kill -9 of a clone's QEMU", func(t *testing.T) {
		pids := qemuProcesses(other)
		if len(pids) != 1 {
			t.Fatalf("pod %s: QEMU processes %v", other, pids)
		}
		if err := exec.Command("kill", "-KILL", pids[0]).Run(); err != nil {
			t.Fatal(err)
		}
		waitExited(t, ctx, c, otherTool)
		if got := inPod(t, webTool, "cat", "/shared/note"); got != "written-by-httpd" {
			t.Errorf("the web pod after its sibling's QEMU was killed: %q", got)
		}
	})

	for _, pod := range []string{web, other} {
		crictl(t, ctx, c, "stopp", pod)
		crictl(t, ctx, c, "rmp", pod)
	}
	ctrtest.AssertNoLeftovers(t, c, web, httpd, webTool, other, otherTool)
	assertNoTaps(t)
	if ms, _, err := (template.Store{Root: templates}).List(); err != nil || len(ms) != 1 {
		t.Errorf("template after the pods are gone: %v, %v", ms, err)
	}
}

//go:build integration

package integration

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kasa-runtime/kasa/test/ctrtest"
	"github.com/kasa-runtime/kasa/virtcontainers/template"
)

// imageMapping is how QEMU process pid maps the guest image: the mapping's
// permissions and the file's device:inode ("" when it does not map it).
func imageMapping(t *testing.T, pid, image string) (perms, file string) {
	t.Helper()
	f, err := os.Open("/proc/" + pid + "/maps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// address perms offset dev inode path
		fields := strings.Fields(sc.Text())
		if len(fields) == 6 && fields[5] == image {
			return fields[1], fields[3] + ":" + fields[4]
		}
	}
	return "", ""
}

// TestCRIPodFromImage runs pods whose guest root is the ext4 image
// (hypervisor.qemu.image) instead of the initramfs, from a template made
// with it: they run, serve and exec as the others do; every QEMU maps the
// one image file read-only and shared; the guest runs its agent from the
// image with DAX; and the guests power off by themselves when their pods
// are removed.
func TestCRIPodFromImage(t *testing.T) {
	dir := requireVM(t)
	image := filepath.Join(dir, "guest.img")
	if _, err := os.Stat(image); err != nil {
		ctrtest.Missing(t, "%s (make guest-image)", image)
	}
	templates := filepath.Join(t.TempDir(), "template")
	c, ctx := startCRIHarness(t, 8*time.Minute, func(o *ctrtest.Options) {
		body, err := os.ReadFile(o.KasaConfigPath)
		if err != nil {
			t.Fatal(err)
		}
		// The harness names its initrd; naming the image instead replaces it.
		initrd := regexp.MustCompile(`(?m)^initrd = .*$`)
		if !initrd.Match(body) {
			t.Fatalf("the harness's configuration names no initrd:\n%s", body)
		}
		body = initrd.ReplaceAll(body, []byte("image = \""+image+"\""))
		// The harness's file ends with its [agent.kata] table.
		body = append(body, "debug_console_enabled = true\n\n[factory]\nenable_template = true\ntemplate_path = \""+templates+"\"\n"...)
		if err := os.WriteFile(o.KasaConfigPath, body, 0o644); err != nil {
			t.Fatal(err)
		}
	})

	webCfg := ctrtest.PodConfig("image-web")
	web := runPod(t, ctx, c, webCfg)
	startContainer(t, ctx, c, web, webCfg, containerConfig("httpd", ctrtest.WebServerImage, nil))
	toolCfg := ctrtest.PodConfig("image-tool")
	tool := runPod(t, ctx, c, toolCfg)
	sh := startContainer(t, ctx, c, tool, toolCfg, containerConfig("tool", ctrtest.BusyboxImage, []string{"sleep", "3600"}))

	t.Run("serves and execs", func(t *testing.T) {
		body, err := httpGet(ctx, "http://"+podIP(t, ctx, c, web)+"/")
		if err != nil || body != ctrtest.WebServerBody {
			t.Errorf("page %q, %v; want %q", body, err, ctrtest.WebServerBody)
		}
		if got := crictl(t, ctx, c, "exec", "--sync", "--timeout", "60", sh, "sh", "-c", "echo ok > /tmp/f && cat /tmp/f"); got != "ok" {
			t.Errorf("exec: %q", got)
		}
	})

	t.Run("one image file, mapped read-only and shared by every clone", func(t *testing.T) {
		if ms, broken, err := (template.Store{Root: templates}).List(); err != nil || len(ms) != 1 || len(broken) != 0 || ms[0].Spec.Image != image {
			t.Fatalf("templates %+v, broken %v, %v; want one, of the image", ms, broken, err)
		}
		var files []string
		for _, pod := range []string{web, tool} {
			pids := qemuProcesses(pod)
			if len(pids) != 1 {
				t.Fatalf("pod %s: QEMU processes %v", pod, pids)
			}
			cmdline, _ := os.ReadFile("/proc/" + pids[0] + "/cmdline")
			if !strings.Contains(string(cmdline), "\x00-incoming\x00") || !strings.Contains(string(cmdline), "nvdimm,id=kasa-image0") {
				t.Errorf("pod %s is not a clone with the image's NVDIMM: %q", pod, cmdline)
			}
			perms, file := imageMapping(t, pids[0], image)
			if perms != "r--s" {
				t.Errorf("pod %s: QEMU maps %s as %q, want read-only and shared (r--s)", pod, image, perms)
			}
			files = append(files, file)
		}
		if files[0] != files[1] {
			t.Errorf("the clones map different files: %q", files)
		}
	})

	t.Run("the agent runs from the image with DAX", func(t *testing.T) {
		out := kasaExecScript(t, ctx, tool[:12], "grep ' /kasa/bin ' /proc/self/mountinfo\n")
		// "16 15 259:0 /kasa/bin /kasa/bin ro,relatime - ext4 /dev/root ro,dax=always"
		// (the kernel mounted the image as its root, so it names it /dev/root).
		if !regexp.MustCompile(`/kasa/bin /kasa/bin \S+ - ext4 \S+ \S*dax=always`).Match(out) {
			t.Errorf("the agent's directory is not the image mounted with DAX:\n%s", out)
		}
	})

	for _, pod := range []string{web, tool} {
		crictl(t, ctx, c, "stopp", pod)
		crictl(t, ctx, c, "rmp", pod)
	}
	// A guest that hangs on its way down costs every pod removal a wait
	// and a forced stop; these must power off by themselves.
	if n := logCount(c, "did not power off"); n > 0 {
		t.Errorf("%d guests did not power off by themselves (containerd's log says so)", n)
	}
	ctrtest.AssertNoLeftovers(t, c, web, tool, sh)
	assertNoTaps(t)
}

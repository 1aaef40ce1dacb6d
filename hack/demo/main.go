// Command demo is the README's main job: a Kubernetes-style pod in its own
// VM through containerd's CRI with the RuntimeClass handler "kata", Kasa's
// installed shim and its embedded defaults. The pod's container serves
// HTTP; the page is fetched from the pod IP on the host, and the kernel the
// container sees is shown beside the host's. The same pod under runc runs
// beside it for comparison. It starts a private containerd, a local image
// registry and a CNI bridge of its own, and leaves nothing behind.
//
//	make demo   (installs Kasa and crictl first, then runs this from the repository)
package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
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

const steps = 6

func step(n int, format string, args ...any) {
	fmt.Printf("[%d/%d] %s\n", n, steps, fmt.Sprintf(format, args...))
}

func detail(format string, args ...any) { fmt.Printf("      "+format+"\n", args...) }

func run(ctx context.Context) error {
	repo, err := os.Getwd()
	if err != nil {
		return err
	}
	crictl := filepath.Join(repo, "bin", "crictl")
	if _, err := os.Stat(crictl); err != nil {
		return fmt.Errorf("%s: %w (make cri-tools)", crictl, err)
	}

	step(1, "serving the pod images from a registry in this process (no registry is reachable)")
	reg, err := ctrtest.StartCRIRegistry(repo)
	if err != nil {
		return err
	}
	defer reg.Close()
	detail("%s mirrors registry.k8s.io: %s, %s", reg.Addr, ctrtest.PauseImage, ctrtest.WebServerImage)

	step(2, "starting a private containerd with CRI, the handler \"kata\" and a CNI bridge")
	c, err := ctrtest.Launch(ctx, ctrtest.Options{
		CRI: true, Crictl: crictl, SandboxImage: ctrtest.PauseImage, RegistryMirror: reg.Endpoint(),
	})
	if err != nil {
		return err
	}
	defer func() {
		if err := c.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "demo: stopping containerd:", err)
		}
	}()
	detail("containerd answered after %v on %s; CNI bridge %s", c.StartupTime.Round(time.Millisecond), c.Address, c.CRIBridge())

	hostKernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	var results []podResult
	for i, handler := range []string{"kata", "runc"} {
		step(3+i, "crictl runp --runtime %s, then a web server container in the pod", handler)
		r, err := runPod(ctx, c, handler)
		if err != nil {
			return err
		}
		results = append(results, r)
	}

	step(5, "what each pod's container saw")
	fmt.Printf("      %-6s %-34s %-14s %s\n", "pod", "kernel in the container", "pod ready", "HTTP from the node to the pod IP")
	fmt.Printf("      %-6s %-34s %-14s %s\n", "host", strings.TrimSpace(string(hostKernel)), "", "")
	for _, r := range results {
		fmt.Printf("      %-6s %-34s %-14v %s → %q\n", r.handler, r.kernel, r.ready.Round(time.Millisecond), r.url, strings.TrimSpace(r.body))
	}
	if results[0].kernel == strings.TrimSpace(string(hostKernel)) {
		return fmt.Errorf("the kata pod saw the host's kernel: it did not run in a VM")
	}

	step(6, "checking that nothing is left (no VM, shim, tap, mount or state)")
	if left := ctrtest.WaitNoLeftovers(ctx, 10*time.Second, c); len(left) > 0 {
		return fmt.Errorf("left behind:\n  %s", strings.Join(left, "\n  "))
	}
	detail("clean: the kata pod ran in its own VM and is gone")
	return nil
}

type podResult struct {
	handler, kernel, url, body string
	ready                      time.Duration
}

// runPod runs a pod with one web server container under handler, fetches
// its page from the pod IP, reads the container's kernel, and removes it.
func runPod(ctx context.Context, c *ctrtest.Containerd, handler string) (podResult, error) {
	r := podResult{handler: handler}
	pod := ctrtest.PodConfig("demo-" + handler)
	podPath, err := c.WriteJSON("pod-"+handler+".json", pod)
	if err != nil {
		return r, err
	}
	ctrPath, err := c.WriteJSON("ctr-"+handler+".json", map[string]any{
		"metadata": map[string]any{"name": "web"},
		"image":    map[string]any{"image": ctrtest.WebServerImage},
		"linux":    map[string]any{},
	})
	if err != nil {
		return r, err
	}
	start := time.Now()
	podID, err := c.CrictlOK(ctx, "runp", "--runtime", handler, podPath)
	if err != nil {
		return r, err
	}
	defer func() {
		c.CrictlOK(context.WithoutCancel(ctx), "stopp", podID)
		c.CrictlOK(context.WithoutCancel(ctx), "rmp", podID)
	}()
	detail("pod %s running after %v", podID[:12], time.Since(start).Round(time.Millisecond))
	id, err := c.CrictlOK(ctx, "create", "--with-pull", podID, ctrPath, podPath)
	if err != nil {
		return r, err
	}
	if _, err := c.CrictlOK(ctx, "start", id); err != nil {
		return r, err
	}
	r.ready = time.Since(start)
	detail("container %s started after %v", id[:12], r.ready.Round(time.Millisecond))
	if r.kernel, err = c.CrictlOK(ctx, "exec", "--sync", id, "uname", "-r"); err != nil {
		return r, err
	}
	ip, err := c.CrictlOK(ctx, "inspectp", "--output", "go-template", "--template", "{{.status.network.ip}}", podID)
	if err != nil {
		return r, err
	}
	r.url = "http://" + ip + "/"
	if r.body, err = fetch(ctx, r.url); err != nil {
		return r, err
	}
	detail("GET %s from the node: %d bytes", r.url, len(r.body))
	return r, nil
}

func fetch(ctx context.Context, url string) (string, error) {
	client := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get(url)
		if err == nil {
			b, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if rerr == nil && resp.StatusCode == http.StatusOK {
				return string(b), nil
			}
			err = fmt.Errorf("%s %v", resp.Status, rerr)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return "", fmt.Errorf("GET %s: %w", url, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

//go:build integration

package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kasa-runtime/kasa/test/ctrtest"
	"github.com/kasa-runtime/kasa/virtcontainers/admission"
)

// stormPods is how many pods TestCRIStorm starts at once: twice what this
// 2-CPU machine managed before boots were admitted node-wide (ten worked,
// twenty all failed at agent.kata.dial_timeout).
const stormPods = 20

// TestCRIStorm starts 20 pods at once through CRI, each with a container
// answering ExecSync, as a node coming back or a Deployment scaled up
// does. Every pod must become ready: the boots queue for the node's boot
// slots (runtime.max_concurrent_boots, here derived from the CPUs) instead
// of starving each other past their deadline. It prints how long that
// took, and asserts no timing. On a host loaded by other work a queued
// pod can outlast the kubelet's 4-minute RunPodSandbox deadline; it is
// then asked for again, as the kubelet does (runpAsKubelet), and the log
// says so. Then every pod is removed at once and
// nothing of any is left: no QEMU, shim, mount, state, tap (the pod
// netns is gone), cgroup or boot-queue ticket.
func TestCRIStorm(t *testing.T) {
	c, ctx := startCRIHarness(t, 25*time.Minute, nil)
	parent := "/kasa-it-" + filepath.Base(t.TempDir())
	t.Cleanup(func() { removeCgroupTree(parent) })
	// The storm is one of pods, not of image pulls.
	crictl(t, ctx, c, "pull", ctrtest.BusyboxImage)

	type pod struct {
		id, ctr, netns string
		ready          time.Duration
		err            error
	}
	pods := make([]pod, stormPods)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := &pods[i]
			p.id, p.ctr, p.err = startReadyPod(ctx, c, fmt.Sprintf("storm%d", i), parent, t.Logf)
			p.ready = time.Since(start)
		}()
	}
	wg.Wait()
	all := time.Since(start)

	var ids, failed []string
	var readyAt []time.Duration
	for i := range pods {
		p := &pods[i]
		if p.id != "" {
			ids = append(ids, p.id)
			p.netns = podNetNS(t, ctx, c, p.id)
		}
		if p.ctr != "" {
			ids = append(ids, p.ctr)
		}
		if p.err != nil {
			failed = append(failed, fmt.Sprintf("pod %d: %v", i, p.err))
			continue
		}
		readyAt = append(readyAt, p.ready)
	}
	t.Logf("%d pods started at once: %d ready, the last after %v (first %v, median %v; max_concurrent_boots derived from %d CPUs)",
		stormPods, len(readyAt), all.Round(time.Millisecond), quantile(readyAt, 0), quantile(readyAt, 50), runtime.NumCPU())
	if queued := strings.Count(c.LogTail(1<<20), "boot admitted after queueing"); queued > 0 {
		t.Logf("%d boots queued for a slot at least a second", queued)
	}
	if len(failed) > 0 {
		t.Errorf("%d of %d pods did not become ready:\n%s", len(failed), stormPods, strings.Join(failed, "\n"))
	}

	rmStart := time.Now()
	for _, p := range pods {
		if p.id == "" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.CrictlOK(context.WithoutCancel(ctx), "rmp", "--force", p.id); err != nil {
				t.Errorf("rmp %s: %v", p.id, err)
			}
		}()
	}
	wg.Wait()
	t.Logf("%d pods removed at once in %v", len(pods), time.Since(rmStart).Round(time.Millisecond))

	if left := ctrtest.WaitNoLeftovers(ctx, 60*time.Second, c, ids...); len(left) > 0 {
		t.Errorf("left behind:\n  %s", strings.Join(left, "\n  "))
	}
	assertNoTaps(t)
	for _, p := range pods {
		if p.netns != "" {
			if _, err := os.Stat(p.netns); err == nil {
				t.Errorf("pod %s: network namespace %s (and any tap in it) left", p.id, p.netns)
			}
		}
		if p.id == "" {
			continue
		}
		roots, _ := filepath.Glob("/sys/fs/cgroup/*")
		for _, r := range append(roots, "/sys/fs/cgroup") {
			if d := filepath.Join(r, parent, p.id); isDir(d) {
				t.Errorf("pod cgroup %s left", d)
			}
		}
	}
	if tickets, _ := os.ReadDir(filepath.Join(admission.Dir, "queue")); len(tickets) > 0 {
		// Another test run sharing the host may be queued; name them.
		for _, tk := range tickets {
			t.Logf("boot queue ticket present: %s", tk.Name())
		}
	}
	if out, _ := c.CrictlOK(ctx, "pods", "-q"); out != "" {
		t.Errorf("pods left: %s", out)
	}
}

// startReadyPod runs a pod under cgroup parent with one busybox container
// and waits until ExecSync answers in it; it returns what it created even
// on error, for the cleanup.
func startReadyPod(ctx context.Context, c *ctrtest.Containerd, name, parent string, logf func(string, ...any)) (podID, ctrID string, err error) {
	podCfg := ctrtest.PodConfig(name)
	podCfg["linux"].(map[string]any)["cgroup_parent"] = parent
	podPath, err := c.WriteJSON(name+"-pod.json", podCfg)
	if err != nil {
		return "", "", err
	}
	ctrPath, err := c.WriteJSON(name+"-ctr.json", map[string]any{
		"metadata": map[string]any{"name": "sleep"},
		"image":    map[string]any{"image": ctrtest.BusyboxImage},
		"command":  []string{"sleep", "3600"},
		"linux":    map[string]any{"security_context": map[string]any{"namespace_options": map[string]any{"pid": 1}}},
	})
	if err != nil {
		return "", "", err
	}
	if podID, err = runpAsKubelet(ctx, c, podPath, logf); err != nil {
		return "", "", err
	}
	if ctrID, err = c.CrictlOK(ctx, "create", podID, ctrPath, podPath); err != nil {
		return podID, "", err
	}
	if _, err = c.CrictlOK(ctx, "start", ctrID); err != nil {
		return podID, ctrID, err
	}
	out, err := c.CrictlOK(ctx, "exec", "--sync", ctrID, "echo", "ready")
	if err == nil && out != "ready" {
		err = fmt.Errorf("exec in %s: %q, want ready", ctrID, out)
	}
	return podID, ctrID, err
}

// runpAsKubelet runs a pod as the kubelet would: crictl's RunPodSandbox
// deadline is the kubelet's (4 minutes), and a pod whose start ran out of
// it while queued behind other boots on a loaded host is asked for again,
// as the kubelet does, at most twice. Any other failure is final.
func runpAsKubelet(ctx context.Context, c *ctrtest.Containerd, podPath string, logf func(string, ...any)) (string, error) {
	for attempt := 1; ; attempt++ {
		res, err := c.Crictl(ctx, "runp", "--runtime", "kata", podPath)
		if err != nil {
			return "", err
		}
		if res.ExitCode == 0 {
			return strings.TrimSpace(res.Stdout), nil
		}
		if attempt == 3 || !strings.Contains(res.Stderr, "code = DeadlineExceeded") {
			return "", fmt.Errorf("crictl runp %s (attempt %d): exit %d: %s", podPath, attempt, res.ExitCode, res.Stderr)
		}
		logf("%s: RunPodSandbox ran out of its deadline after %v (attempt %d); asking again, as the kubelet does", filepath.Base(podPath), res.Duration.Round(time.Second), attempt)
	}
}

// quantile is the p-th percentile of ds (0 when empty).
func quantile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[(len(s)-1)*p/100].Round(time.Millisecond)
}

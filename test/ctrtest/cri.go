package ctrtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// CRI images the harness serves from its registry (PushCRIImages): the
// pause image containerd's sandbox_image names, critest's busybox, and a
// stand-in for critest's nginx (busybox httpd on port 80).
const (
	PauseImage     = "registry.k8s.io/pause:3.9"
	BusyboxImage   = "registry.k8s.io/e2e-test-images/busybox:1.29-2"
	WebServerImage = "registry.k8s.io/e2e-test-images/nginx:1.14-2"
	// WebServerBody is the page WebServerImage serves at /.
	WebServerBody = "<h1>Welcome to nginx! (busybox httpd in a Kasa test image)</h1>\n"
)

// StartCRIRegistry serves the CRI test images (see pushCRIImages) from a
// registry in this process; repo is the repository, whose cmd/kasa-pause is
// built for the pause image. The caller closes the registry.
func StartCRIRegistry(repo string) (_ *Registry, err error) {
	r, err := StartRegistry()
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			r.Close()
		}
	}()
	tmp, err := os.MkdirTemp("", "kasa-pause")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	pause, err := buildPause(repo, tmp)
	if err != nil {
		return nil, err
	}
	return r, pushCRIImages(r, pause)
}

// pushCRIImages builds and pushes the CRI test images to r: pause (with
// the pause binary for runc; the path is a static build of cmd/kasa-pause),
// busybox with every applet, and the web server.
func pushCRIImages(r *Registry, pause string) error {
	if err := r.PushPause(PauseImage, pause); err != nil {
		return err
	}
	applets, err := AllApplets("/bin/busybox")
	if err != nil {
		return err
	}
	if err := r.PushBusybox(ImageOptions{Name: BusyboxImage, Applets: applets}); err != nil {
		return err
	}
	return r.PushBusybox(ImageOptions{
		Name: WebServerImage, Applets: applets,
		Cmd:   []string{"httpd", "-f", "-v", "-p", "80", "-h", "/usr/share/nginx/html"},
		Files: map[string][]byte{"usr/share/nginx/html/index.html": []byte(WebServerBody)},
	})
}

// Pod network of a harness: a CNI bridge of its own with a /24 of its own,
// so harness instances on one host do not collide.
type podNetwork struct {
	Bridge, Subnet, Gateway string
}

func newPodNetwork() podNetwork {
	var b [2]byte
	rand.Read(b[:])
	prefix := fmt.Sprintf("10.89.%d.", b[0])
	return podNetwork{Bridge: fmt.Sprintf("kbr%02x%02x", b[0], b[1]), Subnet: prefix + "0/24", Gateway: prefix + "1"}
}

// conflist is the CNI configuration: Debian's bridge with host-local IPAM
// and masquerading, and portmap for hostPort.
func (n podNetwork) conflist() []byte {
	cfg := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "kasa-test-" + n.Bridge,
		"plugins": []any{
			map[string]any{
				"type": "bridge", "bridge": n.Bridge, "isGateway": true, "ipMasq": true, "hairpinMode": true,
				"ipam": map[string]any{
					"type":   "host-local",
					"ranges": [][]map[string]string{{{"subnet": n.Subnet, "gateway": n.Gateway}}},
					"routes": []map[string]string{{"dst": "0.0.0.0/0"}},
				},
			},
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
		},
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	return b
}

// containerd 2.x's CRI plugins (config version 3): the runtime side
// (runtimes, CNI, netns and OOM settings), the image side (registry,
// pinned images such as the sandbox image) and the gRPC server, which
// keeps io.containerd.grpc.v1.cri for the streaming server.
const (
	criGRPCPlugin    = "io.containerd.grpc.v1.cri"
	criRuntimePlugin = "io.containerd.cri.v1.runtime"
	criImagesPlugin  = "io.containerd.cri.v1.images"
)

// renderCRI is the CRI plugin's part of config.toml: one table
// io.containerd.grpc.v1.cri for containerd 1.x (config version 2), the
// three plugins above for 2.x (version 3).
func renderCRI(c *Containerd, opts Options) string {
	var b strings.Builder
	grpc := fmt.Sprintf("[plugins.%q", criGRPCPlugin)
	runtime, images := grpc, grpc
	if c.Release.V2() {
		runtime, images = fmt.Sprintf("[plugins.%q", criRuntimePlugin), fmt.Sprintf("[plugins.%q", criImagesPlugin)
	}
	fmt.Fprintf(&b, "  %s]\n", grpc)
	b.WriteString("    stream_server_address = \"127.0.0.1\"\n    stream_server_port = \"0\"\n")
	if runtime != grpc {
		fmt.Fprintf(&b, "  %s]\n", runtime)
	}
	b.WriteString("    netns_mounts_under_state_dir = true\n")
	// No CAP_SYS_RESOURCE here: containerd must not raise oom_score_adj.
	b.WriteString("    restrict_oom_score_adj = true\n")
	if opts.SandboxImage != "" {
		if c.Release.V2() {
			fmt.Fprintf(&b, "  %s.pinned_images]\n    sandbox = %q\n", images, opts.SandboxImage)
		} else {
			fmt.Fprintf(&b, "    sandbox_image = %q\n", opts.SandboxImage)
		}
	}
	binDir := "bin_dir = \"/usr/lib/cni\""
	if c.Release.V2() {
		binDir = "bin_dirs = [\"/usr/lib/cni\"]"
	}
	fmt.Fprintf(&b, "  %s.cni]\n    %s\n    conf_dir = %q\n    max_conf_num = 1\n", runtime, binDir, opts.CNIConfDir)
	fmt.Fprintf(&b, "  %s.containerd]\n    default_runtime_name = \"runc\"\n", runtime)
	rt := runtime + ".containerd.runtimes"
	fmt.Fprintf(&b, "  %s.runc]\n    runtime_type = %q\n  %s.runc.options]\n    Root = %q\n", rt, RuntimeRunc, rt, c.RuncRoot)
	fmt.Fprintf(&b, "  %s.kata]\n    runtime_type = %q\n    pod_annotations = [\"io.katacontainers.*\"]\n", rt, RuntimeKasa)
	if opts.KasaConfigPath != "" {
		fmt.Fprintf(&b, "  %s.kata.options]\n    ConfigPath = %q\n", rt, opts.KasaConfigPath)
	}
	if opts.RegistryMirror != "" {
		for _, host := range MirroredRegistries {
			fmt.Fprintf(&b, "  %s.registry.mirrors.%q]\n    endpoint = [%q]\n", images, host, opts.RegistryMirror)
		}
	}
	return b.String()
}

// Crictl runs crictl against this containerd's CRI (see Options.CRI). A
// non-zero exit code is in the Result, not an error.
func (c *Containerd) Crictl(ctx context.Context, args ...string) (Result, error) {
	return c.CrictlStdin(ctx, nil, args...)
}

// CrictlStdin is Crictl with stdin from r (nil: none).
func (c *Containerd) CrictlStdin(ctx context.Context, r io.Reader, args ...string) (Result, error) {
	if c.crictl == "" {
		return Result{}, fmt.Errorf("crictl: not found (hack/install-cri-tools.sh bin), or the harness runs without CRI")
	}
	cmd := c.CrictlCommand(ctx, args...)
	cmd.Stdin = r
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	res := Result{Args: append([]string{"crictl"}, args...), Stdout: stdout.String(), Stderr: stderr.String(), Duration: time.Since(start)}
	if ee, ok := err.(*exec.ExitError); ok && ctx.Err() == nil {
		res.ExitCode = ee.ExitCode()
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("crictl %s: %w", strings.Join(args, " "), err)
	}
	return res, nil
}

// CrictlCommand is crictl with args against this containerd, not started
// (stdio unset). Without CRI it runs a crictl that is not there.
func (c *Containerd) CrictlCommand(ctx context.Context, args ...string) *exec.Cmd {
	full := append([]string{"--runtime-endpoint", "unix://" + c.Address, "--image-endpoint", "unix://" + c.Address, "--timeout", "120s"}, args...)
	cmd := exec.CommandContext(ctx, c.crictl, full...)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// CrictlOK runs crictl and returns its trimmed stdout, or an error that
// carries its output when it fails.
func (c *Containerd) CrictlOK(ctx context.Context, args ...string) (string, error) {
	res, err := c.Crictl(ctx, args...)
	if err != nil {
		return "", err
	}
	if res.ExitCode != 0 {
		return "", fmt.Errorf("crictl %s: exit %d: %s%s", strings.Join(args, " "), res.ExitCode, res.Stderr, res.Stdout)
	}
	return strings.TrimSpace(res.Stdout), nil
}

// WriteJSON writes v as JSON into the instance directory and returns the
// path: crictl's pod and container configs.
func (c *Containerd) WriteJSON(name string, v any) (string, error) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return "", err
	}
	p := filepath.Join(c.Dir, name)
	return p, os.WriteFile(p, b, 0o600)
}

// PodConfig is a crictl pod sandbox config (runtime.v1.PodSandboxConfig
// in JSON) for a pod named name with a unique uid.
func PodConfig(name string) map[string]any {
	return map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": "kasatest", "uid": randomHex(8), "attempt": 0},
		"hostname":      name,
		"log_directory": "",
		"dns_config":    map[string]any{"servers": []string{"10.96.0.10"}, "searches": []string{"kasatest.svc.cluster.local"}, "options": []string{"ndots:5"}},
		// What the kubelet sends without shareProcessNamespace or host
		// namespaces: network POD, pid CONTAINER, ipc POD.
		"linux": map[string]any{"security_context": map[string]any{"namespace_options": map[string]any{"network": 0, "pid": 1, "ipc": 0}}},
	}
}

// CRIBridge is the CNI bridge of this harness, "" without CRI.
func (c *Containerd) CRIBridge() string { return c.net.Bridge }

// removeBridge deletes the harness's CNI bridge (CNI's DEL leaves it).
func (c *Containerd) removeBridge() error {
	if c.net.Bridge == "" {
		return nil
	}
	if _, err := net.InterfaceByName(c.net.Bridge); err != nil {
		return nil
	}
	if out, err := exec.Command("ip", "link", "del", c.net.Bridge).CombinedOutput(); err != nil {
		return fmt.Errorf("delete bridge %s: %v: %s", c.net.Bridge, err, out)
	}
	return nil
}

// removePods stops and removes every pod of CRI (crictl rmp --all --force).
func (c *Containerd) removePods(ctx context.Context) error {
	if c.crictl == "" {
		return nil
	}
	res, err := c.Crictl(ctx, "rmp", "--all", "--force")
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("removing pods: %s", res)
	}
	return nil
}

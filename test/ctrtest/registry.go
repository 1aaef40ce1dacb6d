package ctrtest

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

// MirroredRegistries are the registries CRI's image pulls are sent to the
// local Registry for (Options.RegistryMirror): nothing else is reachable.
var MirroredRegistries = []string{"registry.k8s.io", "gcr.io", "docker.io", "localhost"}

// Registry is an OCI registry served over plain HTTP on 127.0.0.1 by this
// process (go-containerregistry's pkg/registry), in memory.
type Registry struct {
	// Addr is host:port.
	Addr string
	srv  *http.Server
	done chan struct{}
}

// StartRegistry serves an empty registry on a free port of 127.0.0.1.
func StartRegistry() (*Registry, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &Registry{Addr: ln.Addr().String(), done: make(chan struct{})}
	r.srv = &http.Server{
		Handler:           registry.New(registry.Logger(log.New(io.Discard, "", 0))),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() {
		defer close(r.done)
		_ = r.srv.Serve(ln)
	}()
	return r, nil
}

// Close stops serving.
func (r *Registry) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := r.srv.Shutdown(ctx)
	<-r.done
	return err
}

// Endpoint is the mirror endpoint containerd is given.
func (r *Registry) Endpoint() string { return "http://" + r.Addr }

// PushBusybox builds the busybox image opts describe and pushes it as
// opts.Name, a reference of one of MirroredRegistries (e.g.
// registry.k8s.io/e2e-test-images/busybox:1.29-2): the mirror serves its
// repository path.
func (r *Registry) PushBusybox(opts ImageOptions) error {
	opts.defaults()
	bb, err := os.ReadFile(opts.BusyboxPath)
	if err != nil {
		return fmt.Errorf("busybox for the test image: %w (apt-get install busybox-static)", err)
	}
	if err := requireStatic(opts.BusyboxPath, bb); err != nil {
		return err
	}
	layer, err := buildLayer(bb, opts)
	if err != nil {
		return err
	}
	return r.push(opts, layer, "busybox from "+opts.BusyboxPath)
}

// PushPause pushes a pause image, the static binary pause as /pause and
// its entrypoint (runc needs it; Kasa's agent brings its own).
func (r *Registry) PushPause(ref, pause string) error {
	b, err := os.ReadFile(pause)
	if err != nil {
		return fmt.Errorf("pause binary for the pause image: %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := writeFile(tw, "pause", 0o755, b); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return r.push(ImageOptions{Name: ref, Entrypoint: []string{"/pause"}}, buf.Bytes(), "pause from "+pause)
}

// push uploads a one-layer image with the registry API: blobs monolithic,
// then the manifest under the tag.
func (r *Registry) push(opts ImageOptions, layer []byte, createdBy string) error {
	repo, tag, err := splitRef(opts.Name)
	if err != nil {
		return err
	}
	cfgJSON, mfJSON, err := imageDocs(layer, opts, createdBy)
	if err != nil {
		return err
	}
	for _, blob := range [][]byte{layer, cfgJSON} {
		url := fmt.Sprintf("%s/v2/%s/blobs/uploads/?digest=%s", r.Endpoint(), repo, digest(blob))
		if err := httpDo(http.MethodPost, url, "application/octet-stream", blob); err != nil {
			return fmt.Errorf("push %s: %w", opts.Name, err)
		}
	}
	url := fmt.Sprintf("%s/v2/%s/manifests/%s", r.Endpoint(), repo, tag)
	if err := httpDo(http.MethodPut, url, mediaManifest, mfJSON); err != nil {
		return fmt.Errorf("push %s: %w", opts.Name, err)
	}
	return nil
}

// splitRef splits host/repo:tag into the repository path and the tag.
func splitRef(ref string) (repo, tag string, err error) {
	host, rest, ok := strings.Cut(ref, "/")
	if !ok || !strings.ContainsAny(host, ".:") && host != "localhost" {
		return "", "", fmt.Errorf("image %q: want registry/repository[:tag]", ref)
	}
	repo, tag = rest, "latest"
	if i := strings.LastIndex(rest, ":"); i > strings.LastIndex(rest, "/") {
		repo, tag = rest[:i], rest[i+1:]
	}
	return repo, tag, nil
}

func httpDo(method, url, contentType string, body []byte) error {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", contentType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s %s: %s: %s", method, url, resp.Status, b)
	}
	return nil
}

// AllApplets lists every applet of the busybox binary at path.
func AllApplets(path string) ([]string, error) {
	out, err := exec.Command(path, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w", path, err)
	}
	list := strings.Fields(string(out))
	if len(list) == 0 {
		return nil, errors.New(path + " --list: no applets")
	}
	return list, nil
}

// buildPause builds cmd/kasa-pause of the repository at repo into dir and
// returns its path.
func buildPause(repo, dir string) (string, error) {
	out := dir + "/kasa-pause"
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, "./cmd/kasa-pause")
	cmd.Dir, cmd.Env = repo, append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build kasa-pause: %v\n%s", err, b)
	}
	return out, nil
}

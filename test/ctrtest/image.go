package ctrtest

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"
)

// DefaultImage is the reference the busybox image is imported under.
const DefaultImage = "localhost/kasa/busybox:latest"

// DefaultApplets get a /bin symlink to busybox in the image.
var DefaultApplets = []string{
	"[", "ash", "awk", "basename", "cat", "chmod", "cp", "cut", "date", "dd",
	"df", "dirname", "du", "echo", "env", "false", "find", "free", "grep",
	"head", "hostname", "id", "ip", "kill", "ln", "ls", "md5sum", "mkdir",
	"mkfifo", "mount", "mv", "nc", "nproc", "nslookup", "ping",
	"printf", "ps", "pwd", "readlink", "rm", "sed", "seq", "sh",
	"sha256sum", "sleep", "sort", "stat", "sync", "tail", "tee", "test",
	"timeout", "top", "touch", "tr", "true", "umount", "uname", "uniq",
	"wc", "wget", "whoami", "xargs", "yes",
}

// scriptApplets stand in for applets Debian's busybox-static lacks; an
// applet of the same name in ImageOptions.Applets wins.
var scriptApplets = map[string]string{
	"pgrep": `#!/bin/sh
# pgrep [-f] PATTERN: pids whose name (-f: command line) matches the
# extended regex; this shell and its children are not reported.
field=comm
[ "$1" = -f ] && { field=args; shift; }
[ $# -eq 1 ] || { echo "usage: pgrep [-f] PATTERN" >&2; exit 2; }
ps -o pid,ppid,$field | awk -v me=$$ -v pat="$1" '
NR > 1 && $1 != me && $2 != me { p = $1; sub(/^ *[0-9]+ +[0-9]+ /, ""); if ($0 ~ pat) { print p; n++ } }
END { exit n ? 0 : 1 }'
`,
	"pkill": `#!/bin/sh
# pkill [-SIGNAL] [-f] PATTERN: signal what pgrep finds.
sig=TERM
case "$1" in -f) ;; -*) sig=${1#-}; shift ;; esac
pids=$(pgrep "$@" | grep -vx $$) || exit 1
kill -s "$sig" $pids
`,
}

// imageTime is every timestamp of the image, so builds are reproducible.
var imageTime = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// ImageOptions describe the busybox image. The zero value gives
// DefaultImage from /bin/busybox with DefaultApplets and Cmd ["sh"].
type ImageOptions struct {
	Name        string
	BusyboxPath string
	Applets     []string
	Entrypoint  []string
	Cmd         []string
	Env         []string // default: PATH only
	// Files are extra regular files, by path without the leading slash;
	// missing directories are created. Executables are the same with mode
	// 0755, in directories that exist.
	Files, Executables map[string][]byte
	// HostFiles are absolute paths of host files or directories copied
	// into the image at the same paths, with the interpreter and shared
	// libraries of each ELF file among them (see hostFiles).
	HostFiles []string
}

func (o *ImageOptions) defaults() {
	if o.Name == "" {
		o.Name = DefaultImage
	}
	if o.BusyboxPath == "" {
		o.BusyboxPath = "/bin/busybox"
	}
	if o.Applets == nil {
		o.Applets = DefaultApplets
	}
	if o.Cmd == nil && o.Entrypoint == nil {
		o.Cmd = []string{"sh"}
	}
	if o.Env == nil {
		o.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	}
}

// OCI media types and the descriptor/document shapes this builder writes.
const (
	mediaIndex    = "application/vnd.oci.image.index.v1+json"
	mediaManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaConfig   = "application/vnd.oci.image.config.v1+json"
	mediaLayer    = "application/vnd.oci.image.layer.v1.tar"
)

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type imageConfig struct {
	Created      time.Time `json:"created"`
	Architecture string    `json:"architecture"`
	OS           string    `json:"os"`
	Config       struct {
		Env        []string `json:"Env,omitempty"`
		Entrypoint []string `json:"Entrypoint,omitempty"`
		Cmd        []string `json:"Cmd,omitempty"`
		WorkingDir string   `json:"WorkingDir"`
	} `json:"config"`
	RootFS struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
	History []struct {
		Created   time.Time `json:"created"`
		CreatedBy string    `json:"created_by"`
	} `json:"history"`
}

type manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        descriptor   `json:"config"`
	Layers        []descriptor `json:"layers"`
}

type index struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Manifests     []descriptor `json:"manifests"`
}

// BuildImage writes an OCI image layout tarball of a one-layer busybox
// image to w and returns the manifest digest. The same options give the same
// bytes.
func BuildImage(w io.Writer, opts ImageOptions) (string, error) {
	opts.defaults()
	busybox, err := os.ReadFile(opts.BusyboxPath)
	if err != nil {
		return "", fmt.Errorf("busybox for the test image: %w (apt-get install busybox-static)", err)
	}
	if err := requireStatic(opts.BusyboxPath, busybox); err != nil {
		return "", err
	}
	layer, err := buildLayer(busybox, opts)
	if err != nil {
		return "", err
	}
	cfgJSON, mfJSON, err := imageDocs(layer, opts, "busybox from "+opts.BusyboxPath)
	if err != nil {
		return "", err
	}
	tag := "latest"
	if i := strings.LastIndex(opts.Name, ":"); i > strings.LastIndex(opts.Name, "/") {
		tag = opts.Name[i+1:]
	}
	idx := index{SchemaVersion: 2, MediaType: mediaIndex, Manifests: []descriptor{{
		MediaType: mediaManifest, Digest: digest(mfJSON), Size: int64(len(mfJSON)),
		Annotations: map[string]string{
			"io.containerd.image.name":          opts.Name,
			"org.opencontainers.image.ref.name": tag,
		},
	}}}
	idxJSON, err := json.Marshal(idx)
	if err != nil {
		return "", err
	}
	return digest(mfJSON), writeLayout(w, idxJSON, layer, cfgJSON, mfJSON)
}

// imageDocs are the config and manifest of a one-layer image; createdBy is
// its history entry.
func imageDocs(layer []byte, opts ImageOptions, createdBy string) (cfgJSON, mfJSON []byte, err error) {
	var cfg imageConfig
	cfg.Created, cfg.Architecture, cfg.OS = imageTime, runtime.GOARCH, "linux"
	cfg.Config.Env, cfg.Config.Entrypoint, cfg.Config.Cmd, cfg.Config.WorkingDir = opts.Env, opts.Entrypoint, opts.Cmd, "/"
	cfg.RootFS.Type, cfg.RootFS.DiffIDs = "layers", []string{digest(layer)}
	cfg.History = append(cfg.History, struct {
		Created   time.Time `json:"created"`
		CreatedBy string    `json:"created_by"`
	}{imageTime, "kasa test/ctrtest: " + createdBy})
	cfgJSON, err = json.Marshal(cfg)
	if err != nil {
		return nil, nil, err
	}
	mf := manifest{SchemaVersion: 2, MediaType: mediaManifest,
		Config: descriptor{MediaType: mediaConfig, Digest: digest(cfgJSON), Size: int64(len(cfgJSON))},
		Layers: []descriptor{{MediaType: mediaLayer, Digest: digest(layer), Size: int64(len(layer))}},
	}
	mfJSON, err = json.Marshal(mf)
	return cfgJSON, mfJSON, err
}

// writeLayout writes an OCI image layout tarball.
func writeLayout(w io.Writer, idxJSON, layer, cfgJSON, mfJSON []byte) error {
	tw := tar.NewWriter(w)
	files := []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", idxJSON},
	}
	for _, dir := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: imageTime, Format: tar.FormatUSTAR}); err != nil {
			return err
		}
	}
	for _, blob := range [][]byte{layer, cfgJSON, mfJSON} {
		files = append(files, struct {
			name string
			data []byte
		}{"blobs/sha256/" + strings.TrimPrefix(digest(blob), "sha256:"), blob})
	}
	for _, f := range files {
		if err := writeFile(tw, f.name, 0o644, f.data); err != nil {
			return err
		}
	}
	return tw.Close()
}

// buildLayer is the image's only layer: a root tree with busybox, its
// applet symlinks, the usual mount points and a minimal /etc.
func buildLayer(busybox []byte, opts ImageOptions) ([]byte, error) {
	type entry struct {
		hdr  tar.Header
		data []byte
	}
	var entries []entry
	dir := func(name string, mode int64) {
		entries = append(entries, entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode}})
	}
	file := func(name string, mode int64, data []byte) {
		entries = append(entries, entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data))}, data: data})
	}
	for _, d := range []string{"bin", "dev", "etc", "proc", "sbin", "sys", "usr", "usr/bin", "usr/sbin", "var", "run"} {
		dir(d, 0o755)
	}
	dir("root", 0o700)
	dir("tmp", 0o1777)
	dir("var/tmp", 0o1777)
	file("bin/busybox", 0o755, busybox)
	seen := map[string]bool{"busybox": true}
	for _, a := range opts.Applets {
		if a == "" || strings.Contains(a, "/") || seen[a] {
			continue
		}
		seen[a] = true
		entries = append(entries, entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777}})
	}
	for name, script := range scriptApplets {
		if !seen[name] {
			file("bin/"+name, 0o755, []byte(script))
		}
	}
	file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"))
	file("etc/group", 0o644, []byte("root:x:0:\nnobody:x:65534:\n"))
	file("etc/hosts", 0o644, []byte("127.0.0.1\tlocalhost\n::1\tlocalhost\n"))
	dirs := map[string]bool{}
	for _, e := range entries {
		if e.hdr.Typeflag == tar.TypeDir {
			dirs[strings.TrimSuffix(e.hdr.Name, "/")] = true
		}
	}
	parents := func(name string) {
		for d := filepath.Dir(name); d != "." && !dirs[d]; d = filepath.Dir(d) {
			dirs[d] = true
			dir(d, 0o755)
		}
	}
	for name, data := range opts.Files {
		name = strings.TrimPrefix(name, "/")
		parents(name)
		file(name, 0o644, data)
	}
	host, err := hostFiles(opts.HostFiles)
	if err != nil {
		return nil, err
	}
	for name, f := range host {
		parents(name)
		file(name, f.mode, f.data)
	}
	for name, data := range opts.Executables {
		file(strings.TrimPrefix(name, "/"), 0o755, data)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].hdr.Name < entries[j].hdr.Name })

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		e.hdr.ModTime, e.hdr.Format = imageTime, tar.FormatUSTAR
		if err := tw.WriteHeader(&e.hdr); err != nil {
			return nil, fmt.Errorf("layer entry %s: %w", e.hdr.Name, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// requireStatic refuses a dynamically linked busybox (Debian's "busybox"
// package), which would not run in an image without a libc. Non-ELF files
// pass, so tests can use a stand-in.
func requireStatic(path string, b []byte) error {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return nil
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; the test image needs a static busybox (apt-get install busybox-static)", path)
		}
	}
	return nil
}

func writeFile(tw *tar.Writer, name string, mode int64, data []byte) error {
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: imageTime, Format: tar.FormatUSTAR}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// ImportImage builds the image described by opts, imports it into this
// containerd's namespace (unpacked for the default snapshotter) and returns
// its reference.
func (c *Containerd) ImportImage(ctx context.Context, opts ImageOptions) (string, error) {
	opts.defaults()
	tarPath := filepath.Join(c.Dir, "image-"+randomHex(4)+".tar")
	f, err := os.Create(tarPath)
	if err != nil {
		return "", err
	}
	defer os.Remove(tarPath)
	if _, err := BuildImage(f, opts); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	res, err := c.Run(ctx, "images", "import", tarPath)
	if err != nil {
		return "", err
	}
	if res.ExitCode != 0 {
		return "", fmt.Errorf("import image %s: %s", opts.Name, res)
	}
	ls, err := c.Run(ctx, "images", "ls", "-q")
	if err != nil {
		return "", err
	}
	for _, ref := range strings.Fields(ls.Stdout) {
		if ref == opts.Name {
			return ref, nil
		}
	}
	return "", fmt.Errorf("image %s not listed after import: %s", opts.Name, ls)
}

// ImportBusybox imports the default busybox image and records it as
// c.Image, the default of RunContainer.
func (c *Containerd) ImportBusybox(ctx context.Context) (string, error) {
	ref, err := c.ImportImage(ctx, ImageOptions{})
	if err == nil {
		c.Image = ref
	}
	return ref, err
}

// Busybox is ImportBusybox for a test: a missing /bin/busybox skips it (a
// failure under CI=true), any other error fails it.
func (c *Containerd) Busybox(tb testing.TB) string {
	tb.Helper()
	if _, err := os.Stat("/bin/busybox"); err != nil {
		Missing(tb, "/bin/busybox (apt-get install busybox-static)")
	}
	ref, err := c.ImportBusybox(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	return ref
}

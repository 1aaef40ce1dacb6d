package ctrtest

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

// untar maps each entry's name to its header and content.
func untar(t *testing.T, b []byte) (map[string]*tar.Header, map[string][]byte) {
	t.Helper()
	hdrs, data := map[string]*tar.Header{}, map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return hdrs, data
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, dup := hdrs[h.Name]; dup {
			t.Errorf("duplicate tar entry %s", h.Name)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		hdrs[h.Name], data[h.Name] = h, body
	}
}

func blob(t *testing.T, data map[string][]byte, d descriptor) []byte {
	t.Helper()
	b, ok := data["blobs/sha256/"+strings.TrimPrefix(d.Digest, "sha256:")]
	if !ok {
		t.Fatalf("blob %s missing", d.Digest)
	}
	if digest(b) != d.Digest || int64(len(b)) != d.Size {
		t.Fatalf("blob %s: content digest %s, size %d vs %d", d.Digest, digest(b), len(b), d.Size)
	}
	return b
}

// The layout tarball is a valid OCI layout whose digests all match, the
// layer holds what tests rely on, and two builds are byte-identical.
func TestBuildImage(t *testing.T) {
	fake := filepath.Join(t.TempDir(), "busybox")
	if err := os.WriteFile(fake, []byte("not really busybox"), 0o755); err != nil {
		t.Fatal(err)
	}
	opts := ImageOptions{Name: "localhost/x/bb:v1", BusyboxPath: fake, Files: map[string][]byte{"etc/motd": []byte("hi\n")}}
	var first, second bytes.Buffer
	mfDigest, err := BuildImage(&first, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := BuildImage(&second, opts); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first.Bytes(), second.Bytes()) {
		t.Fatal("two builds of the same image differ")
	}

	_, data := untar(t, first.Bytes())
	if string(data["oci-layout"]) != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout = %s", data["oci-layout"])
	}
	var idx index
	if err := json.Unmarshal(data["index.json"], &idx); err != nil {
		t.Fatal(err)
	}
	if len(idx.Manifests) != 1 || idx.Manifests[0].Digest != mfDigest {
		t.Fatalf("index %+v, manifest digest %s", idx, mfDigest)
	}
	if a := idx.Manifests[0].Annotations; a["io.containerd.image.name"] != "localhost/x/bb:v1" || a["org.opencontainers.image.ref.name"] != "v1" {
		t.Errorf("annotations %v", a)
	}
	var mf manifest
	if err := json.Unmarshal(blob(t, data, idx.Manifests[0]), &mf); err != nil {
		t.Fatal(err)
	}
	var cfg imageConfig
	if err := json.Unmarshal(blob(t, data, mf.Config), &cfg); err != nil {
		t.Fatal(err)
	}
	if len(mf.Layers) != 1 || mf.Layers[0].MediaType != mediaLayer {
		t.Fatalf("layers %+v", mf.Layers)
	}
	layer := blob(t, data, mf.Layers[0])
	if cfg.OS != "linux" || cfg.Architecture == "" || !slices.Equal(cfg.Config.Cmd, []string{"sh"}) ||
		len(cfg.RootFS.DiffIDs) != 1 || cfg.RootFS.DiffIDs[0] != digest(layer) || !strings.HasPrefix(cfg.Config.Env[0], "PATH=") {
		t.Errorf("config %+v", cfg)
	}

	hdrs, files := untar(t, layer)
	if string(files["bin/busybox"]) != "not really busybox" || hdrs["bin/busybox"].Mode != 0o755 {
		t.Errorf("bin/busybox: %+v", hdrs["bin/busybox"])
	}
	for _, a := range []string{"sh", "echo", "cat", "sleep", "true", "false", "ls", "dd", "head", "tail", "env", "id", "hostname", "yes", "wc", "ps", "top"} {
		if h := hdrs["bin/"+a]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "busybox" {
			t.Errorf("bin/%s: %+v", a, h)
		}
	}
	for _, a := range []string{"pgrep", "pkill"} {
		if h := hdrs["bin/"+a]; h == nil || h.Typeflag != tar.TypeReg || h.Mode != 0o755 || !strings.HasPrefix(string(files["bin/"+a]), "#!/bin/sh\n") {
			t.Errorf("bin/%s: %+v", a, h)
		}
	}
	for dir, mode := range map[string]int64{"tmp/": 0o1777, "proc/": 0o755, "sys/": 0o755, "dev/": 0o755, "etc/": 0o755, "root/": 0o700} {
		if h := hdrs[dir]; h == nil || h.Typeflag != tar.TypeDir || h.Mode != mode {
			t.Errorf("%s: %+v", dir, h)
		}
	}
	for _, want := range []string{"root:x:0:0:", "nobody:x:65534:65534:"} {
		if !strings.Contains(string(files["etc/passwd"]), want) {
			t.Errorf("etc/passwd lacks %q", want)
		}
	}
	if !strings.Contains(string(files["etc/group"]), "nobody:x:65534:") || string(files["etc/motd"]) != "hi\n" {
		t.Errorf("etc/group %q, etc/motd %q", files["etc/group"], files["etc/motd"])
	}
	for name, h := range hdrs {
		if !h.ModTime.Equal(imageTime) || h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: mtime %v uid %d gid %d", name, h.ModTime, h.Uid, h.Gid)
		}
	}
}

func TestBuildImageErrors(t *testing.T) {
	if _, err := BuildImage(io.Discard, ImageOptions{BusyboxPath: "/nonexistent/busybox"}); err == nil || !strings.Contains(err.Error(), "busybox-static") {
		t.Errorf("missing busybox: %v", err)
	}
	if ls, err := exec.LookPath("ls"); err == nil {
		if _, err := BuildImage(io.Discard, ImageOptions{BusyboxPath: ls}); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
			t.Errorf("dynamic %s accepted as busybox: %v", ls, err)
		}
	}
}

// Every default applet exists in the installed busybox.
func TestDefaultAppletsExist(t *testing.T) {
	out, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		t.Skipf("no /bin/busybox to compare with: %v", err)
	}
	have := strings.Fields(string(out))
	for _, a := range DefaultApplets {
		if !slices.Contains(have, a) {
			t.Errorf("applet %q not in /bin/busybox", a)
		}
	}
}

func TestRenderConfig(t *testing.T) {
	c := &Containerd{Dir: "/run/kasa-test/1", Address: "/run/kasa-test/1/containerd.sock", Root: "/run/kasa-test/1/root",
		State: "/run/kasa-test/1/state", RuncRoot: "/run/kasa-test/1/runc"}
	for _, cri := range []bool{false, true} {
		text := renderConfig(c, Options{CRI: cri, CNIConfDir: "/run/kasa-test/1/cni", KasaConfigPath: "/etc/k.toml", SandboxImage: "localhost/pause:1"})
		var cfg struct {
			Version  int
			Root     string
			State    string
			Disabled []string `toml:"disabled_plugins"`
			GRPC     struct{ Address string }
			Plugins  map[string]map[string]any
		}
		if _, err := toml.Decode(text, &cfg); err != nil {
			t.Fatalf("CRI %v: %v\n%s", cri, err, text)
		}
		if cfg.Version != 2 || cfg.Root != c.Root || cfg.State != c.State || cfg.GRPC.Address != c.Address {
			t.Errorf("CRI %v: %+v", cri, cfg)
		}
		if slices.Contains(cfg.Disabled, "io.containerd.grpc.v1.cri") == cri {
			t.Errorf("CRI %v: disabled plugins %v", cri, cfg.Disabled)
		}
		if cfg.Plugins["io.containerd.internal.v1.opt"]["path"] != "/run/kasa-test/1/opt" {
			t.Errorf("opt plugin path: %v", cfg.Plugins["io.containerd.internal.v1.opt"])
		}
		if !cri {
			continue
		}
		criCfg := cfg.Plugins["io.containerd.grpc.v1.cri"]
		rts := criCfg["containerd"].(map[string]any)["runtimes"].(map[string]any)
		runc, kata := rts["runc"].(map[string]any), rts["kata"].(map[string]any)
		if runc["options"].(map[string]any)["Root"] != c.RuncRoot || kata["runtime_type"] != RuntimeKasa ||
			kata["options"].(map[string]any)["ConfigPath"] != "/etc/k.toml" || criCfg["sandbox_image"] != "localhost/pause:1" {
			t.Errorf("CRI config:\n%s", text)
		}
	}
}

// TestRenderConfigV3: containerd 2.x gets a version 3 config whose CRI
// settings are in the plugins 2.x reads them from, and NRI off.
func TestRenderConfigV3(t *testing.T) {
	c := &Containerd{Dir: "/run/kasa-test/1", Address: "/run/kasa-test/1/containerd.sock", Root: "/run/kasa-test/1/root",
		State: "/run/kasa-test/1/state", RuncRoot: "/run/kasa-test/1/runc", Release: Release{Text: "v2.4.2", Major: 2, Minor: 4}}
	for _, cri := range []bool{false, true} {
		text := renderConfig(c, Options{CRI: cri, CNIConfDir: "/run/kasa-test/1/cni", KasaConfigPath: "/etc/k.toml",
			SandboxImage: "localhost/pause:1", RegistryMirror: "http://127.0.0.1:5000"})
		var cfg struct {
			Version  int
			Root     string
			Disabled []string `toml:"disabled_plugins"`
			GRPC     struct{ Address string }
			Plugins  map[string]map[string]any
		}
		if _, err := toml.Decode(text, &cfg); err != nil {
			t.Fatalf("CRI %v: %v\n%s", cri, err, text)
		}
		if cfg.Version != 3 || cfg.Root != c.Root || cfg.GRPC.Address != c.Address || cfg.Plugins["io.containerd.nri.v1.nri"]["disable"] != true {
			t.Errorf("CRI %v:\n%s", cri, text)
		}
		for _, p := range []string{criGRPCPlugin, criRuntimePlugin, criImagesPlugin} {
			if slices.Contains(cfg.Disabled, p) == cri {
				t.Errorf("CRI %v: disabled plugins %v", cri, cfg.Disabled)
			}
		}
		if !cri {
			continue
		}
		grpc, rt, img := cfg.Plugins[criGRPCPlugin], cfg.Plugins[criRuntimePlugin], cfg.Plugins[criImagesPlugin]
		rts := rt["containerd"].(map[string]any)["runtimes"].(map[string]any)
		kata := rts["kata"].(map[string]any)
		mirrors := img["registry"].(map[string]any)["mirrors"].(map[string]any)
		if grpc["stream_server_address"] != "127.0.0.1" || grpc["sandbox_image"] != nil || grpc["containerd"] != nil ||
			rt["restrict_oom_score_adj"] != true || rt["cni"].(map[string]any)["bin_dirs"].([]any)[0] != "/usr/lib/cni" ||
			kata["runtime_type"] != RuntimeKasa || kata["options"].(map[string]any)["ConfigPath"] != "/etc/k.toml" ||
			img["pinned_images"].(map[string]any)["sandbox"] != "localhost/pause:1" || len(mirrors) != len(MirroredRegistries) {
			t.Errorf("CRI config:\n%s", text)
		}
	}
}

func TestParseRelease(t *testing.T) {
	for in, want := range map[string]Release{
		"containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3\n": {"1.6.20~ds1", 1, 6},
		"containerd github.com/containerd/containerd/v2 v2.4.2 kasa-module-build\n":     {"v2.4.2", 2, 4},
		"containerd github.com/containerd/containerd/v2 2.4.2+unknown\n":                {"2.4.2+unknown", 2, 4},
	} {
		if got, err := ParseRelease(in); err != nil || got != want || got.V2() != (want.Major == 2) {
			t.Errorf("ParseRelease(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "runc 1.1", "containerd x"} {
		if r, err := ParseRelease(bad); err == nil {
			t.Errorf("ParseRelease(%q) = %+v, want an error", bad, r)
		}
	}
}

func TestRunArgs(t *testing.T) {
	c := &Containerd{Dir: "/d", RuncRoot: "/d/runc", Image: "img", kasaConfig: "/k.toml"}
	for _, tc := range []struct {
		ct   Container
		want string
	}{
		{Container{ID: "a", Args: []string{"echo", "hi"}}, "run --rm --runtime io.containerd.runc.v2 --fifo-dir /d/fifo --runc-root /d/runc img a echo hi"},
		{Container{ID: "b", Runtime: RuntimeKasa, Detach: true, Flags: []string{"--env", "X=1"}}, "run --detach --runtime io.containerd.kasa.v2 --fifo-dir /d/fifo --runtime-config-path /k.toml --env X=1 img b"},
		{Container{ID: "c", Runtime: RuntimeKasa, Image: "other", RuntimeConfigPath: "/o.toml"}, "run --rm --runtime io.containerd.kasa.v2 --fifo-dir /d/fifo --runtime-config-path /o.toml other c"},
	} {
		if got := strings.Join(c.RunArgs(tc.ct), " "); got != tc.want {
			t.Errorf("RunArgs(%+v)\n got %s\nwant %s", tc.ct, got, tc.want)
		}
	}
}

func TestParseMountInfo(t *testing.T) {
	in := "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n" +
		"90 22 0:50 / /run/kasa/shared/sb\\0401 rw - tmpfs tmpfs rw\n" +
		"91 22 0:51 / /run/a\\134b rw - tmpfs tmpfs rw\n"
	got := parseMountInfo(in)
	want := []string{"/", "/run/kasa/shared/sb 1", `/run/a\b`}
	if !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestNamesSandbox(t *testing.T) {
	argv := []string{"qemu-system-x86_64", "-name", "sandbox-x10,debug-threads=on", "-pidfile", "/run/kasa/vm/x10/qemu.pid"}
	for id, want := range map[string]bool{"x10": true, "x1": false, "x": false, "x10,": false} {
		if got := namesSandbox(argv, id); got != want {
			t.Errorf("namesSandbox(%q) = %v", id, got)
		}
	}
	if !namesSandbox([]string{"qemu", "-name", "sandbox-ab"}, "ab") {
		t.Error("exact argument not matched")
	}
}

func TestArgValue(t *testing.T) {
	argv := []string{"containerd-shim-kasa-v2", "-namespace", "ns", "-id", "x", "--address=/a.sock"}
	if got := argValue(argv, "-namespace"); got != "ns" {
		t.Errorf("-namespace = %q", got)
	}
	if got := argValue(argv, "-address"); got != "/a.sock" {
		t.Errorf("-address = %q", got)
	}
	if got := argValue(argv, "-bundle"); got != "" {
		t.Errorf("-bundle = %q", got)
	}
}

func TestWithin(t *testing.T) {
	for _, tc := range []struct {
		p, dir string
		want   bool
	}{{"/run/kasa", "/run/kasa", true}, {"/run/kasa/vm/x", "/run/kasa", true}, {"/run/kasa-test/1", "/run/kasa", false}, {"/run", "/run/kasa", false}} {
		if got := within(tc.p, tc.dir); got != tc.want {
			t.Errorf("within(%q, %q) = %v", tc.p, tc.dir, got)
		}
	}
}

func TestServesOurs(t *testing.T) {
	c := &Containerd{Address: "/run/kasa-test/1/containerd.sock"}
	ours := []string{"/bin/containerd-shim-runc-v2", "-namespace", "n", "-id", "a", "-address", c.Address}
	other := []string{"/bin/containerd-shim-kasa-v2", "-namespace", "n", "-id", "b", "-address", "/run/kasa-test/2/containerd.sock"}
	for _, tc := range []struct {
		argv []string
		c    *Containerd
		ids  []string
		want bool
	}{
		{ours, c, nil, true},
		{other, c, nil, false},
		{other, c, []string{"b"}, true},
		{other, nil, nil, true},
		{ours, nil, nil, false},
		{other, nil, []string{"a"}, false},
	} {
		if got := servesOurs(tc.argv, tc.c, tc.ids); got != tc.want {
			t.Errorf("servesOurs(%v, %v, %v) = %v", tc.argv, tc.c != nil, tc.ids, got)
		}
	}
	if !namesID("/run/kasa/shared/sb1/ctr/rootfs", []string{"x", "sb1"}) || namesID("/run/kasa/shared/sb10", []string{"sb1"}) {
		t.Error("namesID")
	}
}

// HostFiles copies files and directories of the host, symlinks followed,
// and brings each dynamically linked binary's interpreter and libraries.
func TestBuildImageHostFiles(t *testing.T) {
	ls, err := exec.LookPath("ls")
	if err != nil {
		t.Skip("no ls on PATH")
	}
	ls, _ = filepath.EvalSymlinks(ls)
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "sub"), 0o755)
	os.WriteFile(filepath.Join(dir, "sub", "data"), []byte("data\n"), 0o600)
	os.Symlink("data", filepath.Join(dir, "sub", "link"))
	fake := filepath.Join(t.TempDir(), "busybox")
	os.WriteFile(fake, []byte("not really busybox"), 0o755)
	var out bytes.Buffer
	if _, err := BuildImage(&out, ImageOptions{BusyboxPath: fake, HostFiles: []string{ls, dir}}); err != nil {
		t.Fatal(err)
	}
	_, data := untar(t, out.Bytes())
	var idx index
	json.Unmarshal(data["index.json"], &idx)
	var mf manifest
	json.Unmarshal(blob(t, data, idx.Manifests[0]), &mf)
	hdrs, files := untar(t, blob(t, data, mf.Layers[0]))

	name := strings.TrimPrefix(ls, "/")
	if h := hdrs[name]; h == nil || h.Typeflag != tar.TypeReg || h.Mode != 0o755 {
		t.Errorf("%s: %+v", name, h)
	}
	rel := strings.TrimPrefix(dir, "/")
	for _, f := range []string{rel + "/sub/data", rel + "/sub/link"} {
		if h := hdrs[f]; h == nil || h.Typeflag != tar.TypeReg || string(files[f]) != "data\n" || h.Mode != 0o600 {
			t.Errorf("%s: %+v %q, want a copy of sub/data", f, h, files[f])
		}
	}
	if h := hdrs[rel+"/sub/"]; h == nil || h.Typeflag != tar.TypeDir {
		t.Errorf("parent directory %s/sub/: %+v", rel, h)
	}
	deps, err := elfDeps(ls, files[name])
	if err != nil || len(deps) < 2 {
		t.Fatalf("deps of %s: %v %v, want an interpreter and libc at least", ls, deps, err)
	}
	libc := false
	for _, d := range deps {
		if hdrs[strings.TrimPrefix(d, "/")] == nil {
			t.Errorf("%s needs %s, not in the image", ls, d)
		}
		libc = libc || filepath.Base(d) == "libc.so.6"
	}
	if !libc {
		t.Errorf("deps of %s lack libc.so.6: %v", ls, deps)
	}

	for _, bad := range []string{"relative/path", "/nonexistent/file"} {
		if _, err := BuildImage(io.Discard, ImageOptions{BusyboxPath: fake, HostFiles: []string{bad}}); err == nil || !strings.Contains(err.Error(), bad) {
			t.Errorf("HostFiles %q: %v, want an error naming it", bad, err)
		}
	}
}

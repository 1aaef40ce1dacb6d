//go:build integration

package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/agent/client"
)

// guestRootfs is where the tests build a busybox root filesystem in the
// guest (there is no shared filesystem from the host yet).
const guestRootfs = "/run/kasa/test/rootfs"

// busyboxApplets are linked to busybox in the test rootfs.
var busyboxApplets = []string{
	"sh", "cat", "echo", "sleep", "head", "tail", "dd", "stty", "tty", "ls", "hostname", "true", "grep", "id", "wc",
}

// copyChunk is how much of a file one CopyFile carries. The API allows
// 1 MiB, but over virtio-serial a ttrpc message whose serialmux frame
// exceeds about 8 KiB never reaches the agent (serialmux.MaxPayload is
// 16 KiB); 4 KiB chunks stay clear of that until the transport is fixed.
const copyChunk = 4 << 10

// copyToGuest sends data to the guest in chunks.
func copyToGuest(ctx context.Context, t *testing.T, ag *client.Client, path string, data []byte, mode uint32) {
	t.Helper()
	const chunk = copyChunk
	for off := 0; off == 0 || off < len(data); off += chunk {
		end := min(off+chunk, len(data))
		err := ag.CopyFile(ctx, &api.CopyFileRequest{
			Path: path, FileMode: unix.S_IFREG | mode, DirMode: 0o755,
			Offset: int64(off), Data: data[off:end], FileSize: int64(len(data)),
		})
		if err != nil {
			t.Fatalf("CopyFile %s at %d: %v", path, off, err)
		}
	}
}

// makeGuestRootfs builds guestRootfs from the host's busybox-static.
func makeGuestRootfs(ctx context.Context, t *testing.T, ag *client.Client) {
	t.Helper()
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("needs busybox-static (apt-get install busybox-static): %v", err)
	}
	copyToGuest(ctx, t, ag, filepath.Join(guestRootfs, "bin/busybox"), busybox, 0o755)
	for _, d := range []string{"proc", "sys", "dev", "tmp", "etc", "host"} {
		err := ag.CopyFile(ctx, &api.CopyFileRequest{Path: filepath.Join(guestRootfs, d), FileMode: unix.S_IFDIR | 0o755, DirMode: 0o755})
		if err != nil {
			t.Fatalf("CopyFile dir %s: %v", d, err)
		}
	}
	for _, a := range busyboxApplets {
		err := ag.CopyFile(ctx, &api.CopyFileRequest{Path: filepath.Join(guestRootfs, "bin", a), FileMode: unix.S_IFLNK | 0o777, Data: []byte("busybox")})
		if err != nil {
			t.Fatalf("CopyFile symlink %s: %v", a, err)
		}
	}
	copyToGuest(ctx, t, ag, filepath.Join(guestRootfs, "etc/passwd"), []byte("root:x:0:0:root:/:/bin/sh\n"), 0o644)
}

// testSpec is runc's example spec running args in the test rootfs.
func testSpec(args ...string) *specs.Spec {
	s := specconv.Example()
	s.Root = &specs.Root{Path: guestRootfs}
	s.Process.Terminal = false
	s.Process.Args = args
	s.Process.Env = []string{"PATH=/bin", "TERM=xterm"}
	s.Hostname = ""
	// What a host spec carries and the agent must drop.
	s.Linux.Namespaces = append(s.Linux.Namespaces[:0:0], s.Linux.Namespaces...)
	for i := range s.Linux.Namespaces {
		if s.Linux.Namespaces[i].Type == specs.NetworkNamespace {
			s.Linux.Namespaces[i].Path = "/var/run/netns/cni-host-only"
		}
	}
	s.Linux.CgroupsPath = "/kubepods/besteffort/pod1234/host-cgroup"
	s.Hooks = &specs.Hooks{Prestart: []specs.Hook{{Path: "/usr/bin/host-only-hook"}}}
	return s
}

type ctrOpts struct {
	terminal, stdin bool
	storages        []*api.Storage
}

// createContainer creates a container from spec.
func createContainer(ctx context.Context, ag *client.Client, id string, spec *specs.Spec, o ctrOpts) error {
	b, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	return ag.CreateContainer(ctx, &api.CreateContainerRequest{
		ContainerId: id, ExecId: id, OciSpecJson: b, Terminal: o.terminal, Stdin: o.stdin, Storages: o.storages,
	})
}

// runContainer creates and starts a container, fails the test on error and
// removes the container at the end of the test.
func runContainer(ctx context.Context, t *testing.T, ag *client.Client, id string, spec *specs.Spec, o ctrOpts) {
	t.Helper()
	if err := createContainer(ctx, ag, id, spec, o); err != nil {
		t.Fatalf("CreateContainer %s: %v", id, err)
	}
	t.Cleanup(func() { removeContainer(t, ag, id) })
	if err := ag.StartContainer(ctx, id); err != nil {
		t.Fatalf("StartContainer %s: %v", id, err)
	}
}

func removeContainer(t *testing.T, ag *client.Client, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := ag.RemoveContainer(ctx, id, 10); err != nil && !strings.Contains(err.Error(), "not found") {
		t.Errorf("RemoveContainer %s: %v", id, err)
	}
}

// readAll reads a stream of a process until end of stream.
func readAll(ctx context.Context, t *testing.T, ag *client.Client, id, execID string, stderr bool) string {
	t.Helper()
	var out bytes.Buffer
	for {
		read := ag.ReadStdout
		if stderr {
			read = ag.ReadStderr
		}
		data, eof, err := read(ctx, id, execID, 0)
		if err != nil {
			t.Fatalf("read %s/%s (stderr %v): %v", id, execID, stderr, err)
		}
		out.Write(data)
		if eof {
			return out.String()
		}
	}
}

// readUntil reads stdout until it contains want.
func readUntil(ctx context.Context, t *testing.T, ag *client.Client, id, execID, want string) string {
	t.Helper()
	var out bytes.Buffer
	for !strings.Contains(out.String(), want) {
		data, eof, err := ag.ReadStdout(ctx, id, execID, 0)
		if err != nil {
			t.Fatalf("read %s/%s waiting for %q (got %q): %v", id, execID, want, out.String(), err)
		}
		out.Write(data)
		if eof {
			t.Fatalf("%s/%s: end of stream before %q; got %q", id, execID, want, out.String())
		}
	}
	return out.String()
}

func waitExit(ctx context.Context, t *testing.T, ag *client.Client, id, execID string) int32 {
	t.Helper()
	resp, err := ag.WaitProcess(ctx, id, execID)
	if err != nil {
		t.Fatalf("WaitProcess %s/%s: %v", id, execID, err)
	}
	if resp.GetExitedAt().AsTime().IsZero() {
		t.Errorf("WaitProcess %s/%s: no exit time", id, execID)
	}
	return resp.GetExitStatus()
}

// execProcess runs args in a running container.
func execProcess(ctx context.Context, ag *client.Client, id, execID string, terminal bool, args ...string) error {
	p := specs.Process{Args: args, Env: []string{"PATH=/bin", "TERM=xterm"}, Cwd: "/", Terminal: terminal}
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	return ag.ExecProcess(ctx, &api.ExecProcessRequest{ContainerId: id, ExecId: execID, ProcessJson: b, Terminal: terminal})
}

// probe runs script in a container that sees the guest's cgroups,
// libcontainer state and mount table, and returns its output.
func probe(ctx context.Context, t *testing.T, ag *client.Client, script string) string {
	t.Helper()
	s := testSpec("sh", "-c", script)
	bind := func(src, dst string) specs.Mount {
		return specs.Mount{Destination: dst, Source: src, Type: "bind", Options: []string{"rbind", "ro"}}
	}
	s.Mounts = append(s.Mounts,
		bind("/sys/fs/cgroup", "/host/cgroup"),
		bind("/run/kasa", "/host/kasa"),
		bind("/etc", "/host/etc"),
	)
	id := "probe-" + strings.ReplaceAll(newID(t), "it-", "")
	runContainer(ctx, t, ag, id, s, ctrOpts{})
	out := readAll(ctx, t, ag, id, "", false)
	if code := waitExit(ctx, t, ag, id, ""); code != 0 {
		t.Fatalf("probe %q exited %d: %s%s", script, code, out, readAll(ctx, t, ag, id, "", true))
	}
	removeContainer(t, ag, id)
	return out
}

// logConsoleOnFailure logs the end of the guest console when the test failed.
func logConsoleOnFailure(t *testing.T, path string) {
	if !t.Failed() {
		return
	}
	b, _ := os.ReadFile(path)
	if len(b) > 8192 {
		b = b[len(b)-8192:]
	}
	t.Logf("guest console ends with:\n%s", b)
}

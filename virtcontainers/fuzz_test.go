package virtcontainers

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/virtcontainers/fsshare"
)

// criContainerSpec is close to what containerd's CRI plugin writes for a
// workload container of a pod: the default kernel file systems, the
// kubelet's bind mounts (hosts, resolv.conf, termination log, service
// account token, an emptyDir), the pod's /dev/shm and the pod's namespaces
// by /proc path.
func criContainerSpec() *specs.Spec {
	sandbox := "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/5f2b"
	pod := "/var/lib/kubelet/pods/0d4c6a9e-7a54-4b1b-9d1e-2f4a6d1b8c3e"
	return &specs.Spec{
		Version:  specs.Version,
		Hostname: "web-0",
		Process: &specs.Process{
			User: specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{1000}},
			Args: []string{"/usr/sbin/nginx", "-g", "daemon off;"}, Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			Cwd: "/", OOMScoreAdj: intPtr(1000), NoNewPrivileges: true,
			Capabilities:    &specs.LinuxCapabilities{Bounding: []string{"CAP_CHOWN", "CAP_NET_BIND_SERVICE"}, Effective: []string{"CAP_CHOWN"}, Permitted: []string{"CAP_CHOWN"}},
			ApparmorProfile: "cri-containerd.apparmor.d",
		},
		Root: &specs.Root{Path: "rootfs"},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
			{Destination: "/etc/hosts", Type: "bind", Source: pod + "/etc-hosts", Options: []string{"rbind", "rprivate", "rw"}},
			{Destination: "/dev/termination-log", Type: "bind", Source: pod + "/containers/web/1a2b", Options: []string{"rbind", "rprivate", "rw"}},
			{Destination: "/etc/hostname", Type: "bind", Source: sandbox + "/hostname", Options: []string{"rbind", "rprivate", "rw"}},
			{Destination: "/etc/resolv.conf", Type: "bind", Source: sandbox + "/resolv.conf", Options: []string{"rbind", "rprivate", "rw"}},
			{Destination: "/dev/shm", Type: "bind", Source: sandbox + "/shm", Options: []string{"rbind", "rprivate", "rw"}},
			{Destination: "/var/run/secrets/kubernetes.io/serviceaccount", Type: "bind", Source: pod + "/volumes/kubernetes.io~projected/kube-api-access-x", Options: []string{"rbind", "rprivate", "ro"}},
			{Destination: "/cache", Type: "bind", Source: pod + "/volumes/kubernetes.io~empty-dir/cache", Options: []string{"rbind", "rprivate", "rw"}},
		},
		Annotations: map[string]string{
			"io.kubernetes.cri.container-type":    "container",
			"io.kubernetes.cri.container-name":    "web",
			"io.kubernetes.cri.sandbox-id":        "5f2b",
			"io.kubernetes.cri.sandbox-name":      "web-0",
			"io.kubernetes.cri.sandbox-namespace": "default",
		},
		Linux: &specs.Linux{
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
				Memory:  &specs.LinuxMemory{Limit: int64Ptr(256 << 20)},
				CPU:     &specs.LinuxCPU{Shares: uint64Ptr(102), Quota: int64Ptr(50000), Period: uint64Ptr(100000)},
			},
			CgroupsPath: "kubepods-burstable-pod0d4c.slice:cri-containerd:1a2b",
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace},
				{Type: specs.IPCNamespace, Path: "/proc/4242/ns/ipc"},
				{Type: specs.UTSNamespace, Path: "/proc/4242/ns/uts"},
				{Type: specs.MountNamespace},
				{Type: specs.NetworkNamespace, Path: "/proc/4242/ns/net"},
			},
			MaskedPaths:   []string{"/proc/acpi", "/proc/kcore", "/proc/keys", "/sys/firmware"},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
			Seccomp:       &specs.LinuxSeccomp{DefaultAction: specs.ActErrno, Syscalls: []specs.LinuxSyscall{{Names: []string{"read", "write"}, Action: specs.ActAllow}}},
			Devices:       []specs.LinuxDevice{{Path: "/dev/fuse", Type: "c", Major: 10, Minor: 229}},
		},
		Hooks: &specs.Hooks{CreateRuntime: []specs.Hook{{Path: "/usr/bin/nvidia-container-runtime-hook", Args: []string{"prestart"}}}},
	}
}

// crioContainerSpec is CRI-O's flavour: "bind" options with type "bind",
// its own /run/secrets and /run/.containerenv, a shareProcessNamespace pod
// (the pid namespace joined) and a relative rootfs.
func crioContainerSpec() *specs.Spec {
	s := criContainerSpec()
	s.Root = &specs.Root{Path: "/var/lib/containers/storage/overlay/ab12/merged", Readonly: true}
	s.Mounts = append(s.Mounts[:6],
		specs.Mount{Destination: "/run/secrets", Type: "bind", Source: "/var/run/containers/storage/overlay-containers/ab12/userdata/run/secrets", Options: []string{"bind", "rprivate"}},
		specs.Mount{Destination: "/run/.containerenv", Type: "bind", Source: "/var/run/containers/storage/overlay-containers/ab12/userdata/.containerenv", Options: []string{"bind", "rprivate"}},
		specs.Mount{Destination: "/dev/shm/", Type: "bind", Source: "/var/run/containers/storage/overlay-containers/5f2b/userdata/shm", Options: []string{"rw", "bind"}},
		specs.Mount{Destination: "/data", Type: "none", Source: "/mnt/disks/ssd0", Options: []string{"rbind", "ro"}},
		specs.Mount{Destination: "/relative", Source: "relative/dir", Options: []string{"bind"}},
	)
	s.Linux.Namespaces[0].Path = "/proc/4242/ns/pid"
	s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.CgroupNamespace})
	s.Annotations = map[string]string{"io.kubernetes.cri-o.ContainerType": "container", "io.kubernetes.cri-o.SandboxID": "5f2b"}
	return s
}

// pauseSpec is a pod sandbox (pause) container's spec.
func pauseSpec() *specs.Spec {
	s := criContainerSpec()
	s.Process.Args = []string{"/pause"}
	s.Mounts = append(s.Mounts[:6], s.Mounts[10]) // the kernel file systems and /dev/shm
	s.Linux.Namespaces = []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace}, {Type: specs.MountNamespace}, {Type: specs.NetworkNamespace, Path: "/var/run/netns/cni-1234"}}
	s.Annotations = map[string]string{"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-log-directory": "/var/log/pods/default_web-0_0d4c"}
	return s
}

func intPtr(v int) *int          { return &v }
func int64Ptr(v int64) *int64    { return &v }
func uint64Ptr(v uint64) *uint64 { return &v }

func addSpecSeeds(f *testing.F) {
	f.Helper()
	host := hostSpec()
	host.VM = &specs.VM{Hypervisor: specs.VMHypervisor{Path: "/usr/bin/qemu-system-x86_64"}, Kernel: specs.VMKernel{Path: "/usr/share/kasa/vmlinuz"}}
	for _, s := range []*specs.Spec{criContainerSpec(), crioContainerSpec(), pauseSpec(), hostSpec(), host} {
		b, err := json.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, uint8(0))
		f.Add(b, uint8(1))
	}
	for _, s := range []string{`{}`, `{"process":{}}`, `{"process":{},"linux":{}}`, `{"process":{},"linux":{"namespaces":[{"type":"user","path":"/proc/1/ns/user"}]}}`,
		`{"process":{},"linux":{},"mounts":[{"destination":"/dev/shm","type":"bind","source":"shm"},{"destination":"/x","options":["rbind"],"source":"/"}]}`,
		`{"process":{},"linux":{"rootfsPropagation":"rslave"},"mounts":[{"destination":"/a","type":"bind","source":"/a","options":["rbind","rslave","ro"]},{"destination":"/b","type":"bind","source":"/b","options":["rbind","rprivate","rro"]},{"destination":"/c","type":"bind","source":"/c","options":["rbind","rshared"]}]}`} {
		f.Add([]byte(s), uint8(0))
	}
}

// checkHostOnlyDropped checks a guest spec keeps none of the host-only
// parts: hooks, devices, the cgroup path, namespace paths, the network
// namespace, the VM section (the host's VMM, kernel and image paths).
func checkHostOnlyDropped(t *testing.T, out *specs.Spec) {
	t.Helper()
	if out.Hooks != nil {
		t.Error("hooks kept")
	}
	if out.VM != nil {
		t.Errorf("VM section kept: %+v", out.VM)
	}
	if out.Windows != nil {
		t.Error("Windows section kept")
	}
	if out.Linux == nil {
		t.Fatal("no linux section")
	}
	if out.Linux.CgroupsPath != "" || len(out.Linux.Devices) != 0 {
		t.Errorf("cgroup path %q or %d devices kept", out.Linux.CgroupsPath, len(out.Linux.Devices))
	}
	for _, n := range out.Linux.Namespaces {
		if n.Path != "" {
			t.Errorf("host namespace path kept: %+v", n)
		}
		if n.Type == specs.NetworkNamespace {
			t.Error("network namespace kept")
		}
	}
}

func decodeSpec(t *testing.T, data []byte) (*specs.Spec, []byte) {
	var in specs.Spec
	if err := json.Unmarshal(data, &in); err != nil {
		t.Skip()
	}
	before, err := json.Marshal(&in)
	if err != nil {
		t.Skip()
	}
	return &in, before
}

// FuzzGuestSpec translates arbitrary OCI specs (JSON, as containerd or
// CRI-O hand them to the shim) to guest specs, with every shared volume but
// those picked by omit shared: errors are fine, but a guest spec names no
// host path: its root is the given rootfs, its bind mounts come from the
// given volume paths or the pod's guest shm, and the host-only parts are
// gone. The input is not modified.
func FuzzGuestSpec(f *testing.F) {
	addSpecSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte, omit uint8) {
		in, before := decodeSpec(t, data)
		const rootfs = "/run/kasa/shared/c1/rootfs"
		shared := sharedVolumes(in)
		volumes := map[int]fsshare.Bound{}
		for k, i := range shared {
			if i < 0 || i >= len(in.Mounts) || !isBind(in.Mounts[i]) || !filepath.IsAbs(in.Mounts[i].Source) {
				t.Fatalf("sharedVolumes listed mount %d: %+v", i, in.Mounts)
			}
			if k < 8 && omit&(1<<k) != 0 {
				continue
			}
			volumes[i] = fsshare.Bound{GuestPath: fmt.Sprintf("/run/kasa/shared/c1/volumes/%d", i)}
			checkVolumeFor(t, in.Mounts[i])
		}
		out, sandboxNS, err := guestSpec(in, rootfs, volumes)
		if after, _ := json.Marshal(in); !bytes.Equal(after, before) {
			t.Fatalf("input modified:\n%s\n%s", before, after)
		}
		if err != nil {
			return
		}
		if out.Root == nil || out.Root.Path != rootfs {
			t.Fatalf("root = %+v, want %s", out.Root, rootfs)
		}
		if len(out.Mounts) != len(in.Mounts) {
			t.Fatalf("%d mounts, want %d", len(out.Mounts), len(in.Mounts))
		}
		for i, m := range out.Mounts {
			switch {
			case isBind(m) != isBind(in.Mounts[i]):
				t.Errorf("mount %d: bind %v became %v", i, isBind(in.Mounts[i]), isBind(m))
			case !isBind(m):
				if !reflect.DeepEqual(m, in.Mounts[i]) && !jsonEqual(m, in.Mounts[i]) {
					t.Errorf("mount %d changed: %+v -> %+v", i, in.Mounts[i], m)
				}
			case isPodShm(m):
				if m.Source != api.GuestPodShm {
					t.Errorf("/dev/shm from %q, want %q", m.Source, api.GuestPodShm)
				}
			case m.Source != volumes[i].GuestPath || volumes[i].GuestPath == "":
				t.Errorf("bind mount %d from %q, not its shared volume %q", i, m.Source, volumes[i].GuestPath)
			}
		}
		checkHostOnlyDropped(t, out)
		for _, ns := range sandboxNS {
			typ := specs.LinuxNamespaceType(ns)
			if !slices.Contains([]string{"ipc", "uts", "pid"}, ns) ||
				!slices.ContainsFunc(out.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == typ }) {
				t.Errorf("sandbox namespace %q (namespaces %+v)", ns, out.Linux.Namespaces)
			}
		}
		if _, err := marshalSpec(out); err != nil {
			t.Errorf("marshalSpec: %v", err)
		}
	})
}

// FuzzPodSandboxSpec translates arbitrary OCI specs of a pod's sandbox
// container: a guest spec has no bind mount, the guest's root and new
// namespaces only.
func FuzzPodSandboxSpec(f *testing.F) {
	addSpecSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte, _ uint8) {
		in, before := decodeSpec(t, data)
		out, err := podSandboxSpec(in)
		if after, _ := json.Marshal(in); !bytes.Equal(after, before) {
			t.Fatalf("input modified:\n%s\n%s", before, after)
		}
		if err != nil {
			return
		}
		if out.Root == nil || out.Root.Path != "/" {
			t.Fatalf("root = %+v, want /", out.Root)
		}
		for _, m := range out.Mounts {
			if isBind(m) {
				t.Errorf("bind mount kept: %+v", m)
			}
		}
		checkHostOnlyDropped(t, out)
	})
}

func jsonEqual(a, b any) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

// scriptedAgent answers WriteStdin and ReadStdout from a fuzzer-made
// script, as a compromised agent could; past its end every call fails.
type scriptedAgent struct {
	agent  // nil: the other calls are not made
	script []byte
	calls  int
	// stalls counts the replies in a row that made no progress and had no
	// error; calledAgain is set by a call after more of them than the
	// caller may tolerate (maxStdinStalls for stdin, none for stdout).
	stalls, tolerate int
	calledAgain      bool
}

var errScriptEnd = errors.New("script ended")

func (a *scriptedAgent) take(n int) ([]byte, bool) {
	if len(a.script) < n {
		a.script = nil
		return nil, false
	}
	b := a.script[:n]
	a.script = a.script[n:]
	return b, true
}

// WriteStdin replies with 1 flag byte (odd: an error) and a 32-bit length.
func (a *scriptedAgent) WriteStdin(_ context.Context, _, _ string, data []byte) (int, error) {
	a.call()
	b, ok := a.take(5)
	if !ok {
		return 0, errScriptEnd
	}
	n := int(binary.BigEndian.Uint32(b[1:])) // as client.WriteStdin converts the reply
	if b[0]&1 != 0 {
		return n, errors.New("agent error")
	}
	a.progress(n == 0)
	return n, nil
}

// ReadStdout replies with 1 flag byte (bit 0: eof, bit 1: an error), 1
// length byte and that many bytes of data.
func (a *scriptedAgent) ReadStdout(_ context.Context, _, _ string, _ uint32) ([]byte, bool, error) {
	a.call()
	h, ok := a.take(2)
	if !ok {
		return nil, false, errScriptEnd
	}
	if h[0]&2 != 0 {
		return nil, false, errors.New("agent error")
	}
	data, ok := a.take(int(h[1]))
	if !ok {
		return nil, false, errScriptEnd
	}
	a.progress(len(data) == 0 && h[0]&1 == 0)
	return bytes.Clone(data), h[0]&1 != 0, nil
}

func (a *scriptedAgent) call() {
	a.calls++
	if a.stalls > a.tolerate {
		a.calledAgain = true
	}
}

func (a *scriptedAgent) progress(none bool) {
	if none {
		a.stalls++
	} else {
		a.stalls = 0
	}
}

// FuzzAgentStreams runs the shim's stdin writer and stdout reader against
// an agent whose replies are arbitrary: WriteStdin's length and
// ReadStdout's data and eof are the guest's word. The writer must return
// 0 <= n <= len(p) and an error unless it wrote everything; neither may
// call the agent again after a reply that made no progress (that loop
// would last as long as the guest likes); and the reader must return
// exactly the data the agent sent, up to its eof.
func FuzzAgentStreams(f *testing.F) {
	reply := func(flags byte, n uint32) []byte { return binary.BigEndian.AppendUint32([]byte{flags}, n) }
	f.Add(uint16(100), bytes.Join([][]byte{reply(0, 60), reply(0, 40)}, nil))
	f.Add(uint16(100), bytes.Join([][]byte{reply(0, 0), reply(0, 0), reply(0, 100)}, nil))
	f.Add(uint16(10), reply(0, 0xffffffff))
	f.Add(uint16(10), reply(1, 5))
	f.Add(uint16(3), []byte{0, 3, 'a', 'b', 'c', 0, 0, 0, 0, 1, 0, 0, 1})
	f.Add(uint16(3), []byte{0, 3, 'a', 'b', 'c', 2, 0})
	f.Fuzz(func(t *testing.T, size uint16, script []byte) {
		// Stdin.
		// The writer retries a reply of nothing written a bounded number
		// of times (maxStdinStalls in a row), then fails.
		a := &scriptedAgent{script: script, tolerate: maxStdinStalls - 1}
		s := &Sandbox{agent: a}
		p := make([]byte, size%4096)
		n, err := s.Stdin(context.Background(), "c", "c").Write(p)
		if n < 0 || n > len(p) {
			t.Fatalf("Write of %d bytes returned n = %d", len(p), n)
		}
		if err == nil && n != len(p) {
			t.Fatalf("Write of %d bytes wrote %d without an error", len(p), n)
		}
		if a.calledAgain || a.calls > (len(p)+1)*maxStdinStalls {
			t.Fatalf("Write of %d bytes called WriteStdin %d times, again after a reply that made no progress: %v", len(p), a.calls, a.calledAgain)
		}

		// Stdout, from the same script.
		a = &scriptedAgent{script: script}
		s = &Sandbox{agent: a}
		// The model: data up to an error, the end of the script, a reply
		// with neither data nor eof (a protocol error), or eof.
		var want []byte
		wantEOF := false
		for rest := script; len(rest) >= 2; {
			h, l := rest[0], int(rest[1])
			if h&2 != 0 || len(rest) < 2+l || (l == 0 && h&1 == 0) {
				break
			}
			want = append(want, rest[2:2+l]...)
			rest = rest[2+l:]
			if h&1 != 0 {
				wantEOF = true
				break
			}
		}
		r := s.Stdout(context.Background(), "c", "c")
		var got []byte
		buf := make([]byte, 7)
		for range len(script) + 2 {
			n, err := r.Read(buf)
			got = append(got, buf[:n]...)
			if n < 0 || n > len(buf) || (n == 0 && err == nil) {
				t.Fatalf("Read returned %d, %v", n, err)
			}
			if err != nil {
				if (err == io.EOF) != wantEOF {
					t.Fatalf("Read ended with %v, want eof %v", err, wantEOF)
				}
				break
			}
		}
		if !bytes.HasPrefix(want, got) {
			t.Fatalf("read %q, not a prefix of the agent's %q", got, want)
		}
		if wantEOF && !bytes.Equal(got, want) {
			t.Fatalf("read %q before eof, want %q", got, want)
		}
		if a.calledAgain || a.calls > len(got)+2 {
			t.Fatalf("%d ReadStdout calls for %d bytes, again after an empty reply: %v", a.calls, len(got), a.calledAgain)
		}
		if n, err := r.Read(buf); wantEOF && (n != 0 || err != io.EOF) {
			t.Fatalf("Read after eof = %d, %v", n, err)
		}
	})
}

// checkVolumeFor: a volume is bound from its own source, and refused
// exactly when it asks for propagation to the host or for recursive
// read-only with propagation from it.
func checkVolumeFor(t *testing.T, m specs.Mount) {
	v, err := volumeFor(m)
	shared := slices.Contains(m.Options, "shared") || slices.Contains(m.Options, "rshared")
	if shared != (err != nil && strings.Contains(err.Error(), "propagation \"")) {
		t.Fatalf("options %q: err %v", m.Options, err)
	}
	if err == nil && (v.Source != m.Source || (v.FollowHost && v.RecursiveReadOnly)) {
		t.Fatalf("options %q: volume %+v", m.Options, v)
	}
}

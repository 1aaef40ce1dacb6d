package configuration

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

const hv = AnnotationPrefix + "hypervisor."

func annotatedBase() *Config {
	cfg := Default()
	cfg.Path = "/etc/kasa/configuration.toml"
	h := &cfg.Hypervisor
	h.KernelParams = "quiet"
	h.EnableAnnotations = []string{
		"default_vcpus", "default_memory", "kernel_params", "machine_type", "path", "kernel",
		"initrd", "virtio_fs_daemon", "msize_9p", "enable_debug", "default_max.*", "shared_fs",
	}
	h.ValidHypervisorPaths = []string{"/usr/bin/qemu-system-*"}
	h.ValidKernelPaths = []string{"/usr/share/kasa/*"}
	h.ValidVirtioFSDaemonPaths = []string{"/usr/libexec/virtiofsd"}
	return cfg
}

func TestApplyAnnotationsAllowed(t *testing.T) {
	tests := []struct {
		name  string
		ann   map[string]string
		check func(h *HypervisorConfig) bool
	}{
		{"ints", map[string]string{hv + "default_vcpus": "2", hv + "default_memory": "1024"},
			func(h *HypervisorConfig) bool { return h.DefaultVCPUs == 2 && h.DefaultMemory == 1024 }},
		{"kernel_params appended", map[string]string{hv + "kernel_params": "debug panic=1"},
			func(h *HypervisorConfig) bool { return h.KernelParams == "quiet debug panic=1" }},
		{"Kata alias", map[string]string{hv + "default_max_vcpus": "4"},
			func(h *HypervisorConfig) bool { return h.DefaultMaxVCPUs == 4 }},
		{"enum", map[string]string{hv + "machine_type": "microvm"},
			func(h *HypervisorConfig) bool { return h.MachineType == MachineMicroVM }},
		{"bool", map[string]string{hv + "enable_debug": "true"},
			func(h *HypervisorConfig) bool { return h.EnableDebug }},
		{"path in glob", map[string]string{hv + "path": "/usr/bin/qemu-system-aarch64", hv + "kernel": "/usr/share/kasa/vmlinux"},
			func(h *HypervisorConfig) bool {
				return h.Path == "/usr/bin/qemu-system-aarch64" && h.Kernel == "/usr/share/kasa/vmlinux"
			}},
		{"virtio-fs with daemon", map[string]string{hv + "shared_fs": "virtio-fs", hv + "virtio_fs_daemon": "/usr/libexec/virtiofsd"},
			func(h *HypervisorConfig) bool { return h.SharedFS == SharedFSVirtioFS }},
		{"ignored annotations", map[string]string{
			"io.kubernetes.cri.container-type":               "sandbox",
			"io.katacontainers.config_path":                  "/tmp/evil.toml",
			AnnotationPrefix + "runtime.disable_new_netns":   "true",
			AnnotationPrefix + "runtime.sandbox_cgroup_only": "true",
		}, func(h *HypervisorConfig) bool { return reflect.DeepEqual(*h, annotatedBase().Hypervisor) }},
		{"none", nil, func(h *HypervisorConfig) bool { return reflect.DeepEqual(*h, annotatedBase().Hypervisor) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := annotatedBase()
			out, err := base.ApplyAnnotations(tt.ann)
			if err != nil {
				t.Fatalf("ApplyAnnotations: %v", err)
			}
			if !tt.check(&out.Hypervisor) {
				t.Errorf("got %+v", out.Hypervisor)
			}
			if !reflect.DeepEqual(base, annotatedBase()) {
				t.Errorf("the original was modified: %+v", base.Hypervisor)
			}
			if out == base {
				t.Error("ApplyAnnotations returned the original, want a copy")
			}
		})
	}
}

func TestApplyAnnotationsRefused(t *testing.T) {
	tests := []struct {
		name      string
		configure func(c *Config)
		ann       map[string]string
		want      string
	}{
		{"not enabled", func(c *Config) { c.Hypervisor.EnableAnnotations = []string{"default_vcpus"} }, map[string]string{hv + "msize_9p": "4096"},
			`pod annotation io.katacontainers.config.hypervisor.msize_9p: hypervisor.qemu.msize_9p = "4096": ` +
				`not enabled: no hypervisor.qemu.enable_annotations entry in /etc/kasa/configuration.toml matches "msize_9p"`},
		{"memory_slots is a Kata key Kasa lacks", nil, map[string]string{hv + "memory_slots": "4"},
			"recognised Kata annotation, not supported by Kasa"},
		{"regexp is anchored", func(c *Config) { c.Hypervisor.EnableAnnotations = []string{"memory", "kernel"} },
			map[string]string{hv + "default_memory": "1024"}, "not enabled"},
		{"regexp is anchored at the end", func(c *Config) { c.Hypervisor.EnableAnnotations = []string{"kernel"} },
			map[string]string{hv + "kernel_params": "debug"}, "not enabled"},
		{"nothing enabled by default", func(c *Config) { c.Hypervisor.EnableAnnotations = nil },
			map[string]string{hv + "default_vcpus": "2"}, "not enabled"},
		{"path outside globs", nil, map[string]string{hv + "path": "/tmp/qemu-system-x86_64"},
			"hypervisor.qemu.path = \"/tmp/qemu-system-x86_64\": not matched by hypervisor.qemu.valid_hypervisor_paths in /etc/kasa/configuration.toml"},
		{"path not clean", nil, map[string]string{hv + "kernel": "/usr/share/kasa/../../../tmp/vmlinuz"},
			"must be a clean absolute path"},
		{"path relative", nil, map[string]string{hv + "virtio_fs_daemon": "virtiofsd"},
			"must be a clean absolute path"},
		{"empty path list", nil, map[string]string{hv + "initrd": "/usr/share/kasa/other.img"},
			"hypervisor.qemu.valid_initrd_paths in /etc/kasa/configuration.toml is empty, so this path cannot be overridden"},
		{"not an integer", nil, map[string]string{hv + "default_vcpus": "two"},
			`hypervisor.qemu.default_vcpus = "two": not an integer`},
		{"not a boolean", nil, map[string]string{hv + "enable_debug": "maybe"},
			`hypervisor.qemu.enable_debug = "maybe": not a boolean`},
		{"out of range", nil, map[string]string{hv + "default_memory": "64"},
			"pod annotation io.katacontainers.config.hypervisor.default_memory: hypervisor.qemu.default_memory = 64: allowed range is 128..4194304"},
		{"bad enum", nil, map[string]string{hv + "machine_type": "virt"},
			`pod annotation io.katacontainers.config.hypervisor.machine_type: hypervisor.qemu.machine_type = "virt": allowed values are q35, pc, microvm`},
		{"control characters", nil, map[string]string{hv + "kernel_params": "a\nb"},
			"must not contain control characters"},
		{"virtio-fs without daemon", func(c *Config) {
			c.Hypervisor.SharedFS, c.Hypervisor.VirtioFSDaemon, c.Hypervisor.Rootless = SharedFS9P, "", false
		},
			map[string]string{hv + "shared_fs": "virtio-fs"},
			`hypervisor.qemu.virtio_fs_daemon = "": an absolute path is required`},
		{"9p under a rootless QEMU", nil, map[string]string{hv + "shared_fs": "virtio-9p"},
			`hypervisor.qemu.shared_fs = "virtio-9p": rootless = true: virtio-9p is served by QEMU itself`},
		{"alias conflict", nil, map[string]string{hv + "default_max_vcpus": "4", hv + "default_maxvcpus": "8"},
			"conflicts with annotation io.katacontainers.config.hypervisor.default_max_vcpus"},
		{"not overridable", func(c *Config) { c.Hypervisor.EnableAnnotations = []string{".*"} },
			map[string]string{hv + "enable_annotations": "[]"},
			`hypervisor.qemu.enable_annotations = "[]": cannot be overridden by pod annotations`},
		{"firmware not overridable", nil, map[string]string{hv + "firmware": "/tmp/fw"},
			"hypervisor.qemu.firmware = \"/tmp/fw\": cannot be overridden"},
		{"Kata key", nil, map[string]string{hv + "block_device_driver": "virtio-blk"},
			`pod annotation io.katacontainers.config.hypervisor.block_device_driver = "virtio-blk": recognised Kata annotation, not supported by Kasa`},
		{"unknown hypervisor key", nil, map[string]string{hv + "frobnicate": "1"},
			`pod annotation io.katacontainers.config.hypervisor.frobnicate = "1": unknown annotation`},
		{"unknown section", nil, map[string]string{AnnotationPrefix + "shim.debug": "1"}, "unknown annotation"},
		{"agent", nil, map[string]string{AnnotationPrefix + "agent.kernel_modules": "e1000e"},
			"agent options cannot be overridden by pod annotations"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := annotatedBase()
			if tt.configure != nil {
				tt.configure(base)
			}
			before := base.Clone()
			out, err := base.ApplyAnnotations(tt.ann)
			if err == nil {
				t.Fatalf("accepted, got %+v", out.Hypervisor)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error:\n%v\nwant it to contain:\n%s", err, tt.want)
			}
			if out != nil {
				t.Error("returned a config along with the error")
			}
			if !reflect.DeepEqual(base, before) {
				t.Errorf("the original was modified: %+v", base.Hypervisor)
			}
		})
	}
}

func TestApplyAnnotationsReportsEveryRefusal(t *testing.T) {
	_, err := annotatedBase().ApplyAnnotations(map[string]string{
		hv + "default_vcpus": "x",
		hv + "rootless":      "false",
		hv + "path":          "/tmp/q",
	})
	var joined interface{ Unwrap() []error }
	if !errors.As(err, &joined) || len(joined.Unwrap()) != 3 {
		t.Fatalf("want 3 joined errors, got %v", err)
	}
	for _, e := range joined.Unwrap() {
		var fe *FieldError
		if !errors.As(e, &fe) || !strings.HasPrefix(fe.Annotation, hv) {
			t.Errorf("%v is not a FieldError naming its annotation", e)
		}
	}
}

// A pod that names its initrd boots from it, not from a configured image.
func TestInitrdAnnotationReplacesImage(t *testing.T) {
	base := annotatedBase()
	base.Hypervisor.Initrd, base.Hypervisor.Image = "", "/usr/share/kasa/guest.img"
	base.Hypervisor.ValidInitrdPaths = []string{"/usr/share/kasa/*"}
	out, err := base.ApplyAnnotations(map[string]string{hv + "initrd": "/usr/share/kasa/initrd.img"})
	if err != nil {
		t.Fatal(err)
	}
	if h := out.Hypervisor; h.Initrd != "/usr/share/kasa/initrd.img" || h.Image != "" {
		t.Errorf("initrd %q, image %q: want the pod's initrd alone", h.Initrd, h.Image)
	}
}

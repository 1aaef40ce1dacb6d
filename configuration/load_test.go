package configuration

import (
	"errors"
	"io/fs"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// isolate points the system search paths into an empty temporary directory
// and clears $KASA_CONF_FILE, returning the directory.
func isolate(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	oldSystem, oldDefaults := SystemConfigPath, DefaultsConfigPath
	SystemConfigPath = filepath.Join(dir, "etc/kasa/configuration.toml")
	DefaultsConfigPath = filepath.Join(dir, "usr/share/defaults/kasa/configuration.toml")
	t.Cleanup(func() { SystemConfigPath, DefaultsConfigPath = oldSystem, oldDefaults })
	t.Setenv(EnvConfigFile, "")
	return dir
}

// loadText writes content to a file and loads it.
func loadText(t *testing.T, content string) (string, *Config, []Warning, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "configuration.toml")
	mustWrite(t, path, content, 0o644)
	cfg, warnings, err := LoadFile(path)
	return path, cfg, warnings, err
}

func TestSearchOrder(t *testing.T) {
	const minimal = "[hypervisor.qemu]\n"
	tests := []struct {
		name    string
		present []string // of explicit, env, system, defaults
		want    string   // which one wins; "" = embedded defaults
	}{
		{"explicit first", []string{"explicit", "env", "system", "defaults"}, "explicit"},
		{"then env", []string{"env", "system", "defaults"}, "env"},
		{"then /etc", []string{"system", "defaults"}, "system"},
		{"then shipped defaults", []string{"defaults"}, "defaults"},
		{"else embedded", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := isolate(t)
			paths := map[string]string{
				"explicit": filepath.Join(dir, "explicit.toml"),
				"env":      filepath.Join(dir, "env.toml"),
				"system":   SystemConfigPath,
				"defaults": DefaultsConfigPath,
			}
			explicit := ""
			for _, p := range tt.present {
				mustWrite(t, paths[p], minimal, 0o644)
				switch p {
				case "explicit":
					explicit = paths[p]
				case "env":
					t.Setenv(EnvConfigFile, paths[p])
				}
			}
			cfg, warnings, err := Load(explicit)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if len(warnings) > 0 {
				t.Errorf("unexpected warnings: %v", warnings)
			}
			if want := paths[tt.want]; cfg.Path != want {
				t.Errorf("Load chose %q, want %q", cfg.Path, want)
			}
			if tt.want == "" && !reflect.DeepEqual(cfg, Default()) {
				t.Errorf("with no file Load = %+v, want the embedded defaults", cfg)
			}
		})
	}
}

func TestRequestedFileMissing(t *testing.T) {
	tests := []struct {
		name   string
		useEnv bool
		origin string
	}{
		{"explicit path", false, "ConfigPath"},
		{"KASA_CONF_FILE", true, "$KASA_CONF_FILE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			isolate(t)
			// A lower-priority file exists: it must not be used instead.
			mustWrite(t, SystemConfigPath, "[hypervisor.qemu]\n", 0o644)
			missing := filepath.Join(t.TempDir(), "nope.toml")
			explicit := missing
			if tt.useEnv {
				explicit = ""
				t.Setenv(EnvConfigFile, missing)
			}
			_, _, err := Load(explicit)
			if err == nil {
				t.Fatal("Load succeeded with a missing requested file")
			}
			if !strings.Contains(err.Error(), missing) || !strings.Contains(err.Error(), tt.origin) {
				t.Errorf("error %q does not name %s and %s", err, missing, tt.origin)
			}
			if !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("error %v does not wrap fs.ErrNotExist", err)
			}
		})
	}
}

func TestLoadFileErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.toml")
	if _, _, err := LoadFile(missing); err == nil || !strings.Contains(err.Error(), `failed to read config from "`+missing+`"`) {
		t.Errorf("LoadFile(missing) error = %v", err)
	}
	path, _, _, err := loadText(t, "[hypervisor.qemu\npath = 1\n")
	if err == nil || !strings.Contains(err.Error(), `failed to read config from "`+path+`"`) {
		t.Errorf("syntax error = %v, want it to name %s", err, path)
	}
}

func TestLoadFileValues(t *testing.T) {
	_, cfg, warnings, err := loadText(t, `
[hypervisor.qemu]
machine_type = "microvm"
default_vcpus = 2
kernel_params = "quiet"
enable_annotations = ["default_.*"]
reclaim_guest_freed_memory = false
[agent.kata]
dial_timeout = 90
kernel_modules = ["vsock", "9p debug=0"]
[runtime]
internetworking_model = "none"
disable_new_netns = true
`)
	if err != nil || len(warnings) > 0 {
		t.Fatalf("LoadFile: %v, warnings %v", err, warnings)
	}
	want := defaultConfig(HypervisorQEMU)
	want.Path = cfg.Path
	want.Hypervisor.MachineType = MachineMicroVM
	want.Hypervisor.DefaultVCPUs = 2
	want.Hypervisor.KernelParams = "quiet"
	want.Hypervisor.EnableAnnotations = []string{"default_.*"}
	want.Hypervisor.ReclaimGuestFreedMemory = false
	want.Agent.DialTimeout = 90 * time.Second
	want.Agent.KernelModules = []string{"vsock", "9p debug=0"}
	want.Runtime.InterNetworkingModel = NetNone
	want.Runtime.DisableNewNetns = true
	want.Origins = map[string]string{}
	for _, k := range []string{"hypervisor.qemu.machine_type", "hypervisor.qemu.default_vcpus", "hypervisor.qemu.kernel_params",
		"hypervisor.qemu.enable_annotations", "hypervisor.qemu.reclaim_guest_freed_memory", "agent.kata.dial_timeout", "agent.kata.kernel_modules",
		"runtime.internetworking_model", "runtime.disable_new_netns"} {
		want.Origins[k] = cfg.Path
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got  %+v\nwant %+v", cfg, want)
	}
}

func TestHypervisorTable(t *testing.T) {
	tests := []struct {
		name, content, want string
	}{
		{"none", "[runtime]\n", "exactly one [hypervisor.<name>] table is required, found 0; supported names are qemu"},
		{"two", "[hypervisor.qemu]\n[hypervisor.clh]\n", "found 2"},
		{"unsupported", "[hypervisor.firecracker]\n", "hypervisor.firecracker: unsupported hypervisor; supported names are qemu"},
		{"not a table", "hypervisor = 1\n", "hypervisor = 1: must be a table"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, _, _, err := loadText(t, tt.content)
			if err == nil || !strings.Contains(err.Error(), path+": ") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %v, want %q naming %s", err, tt.want, path)
			}
		})
	}
}

func TestWrongType(t *testing.T) {
	tests := []struct {
		name, content, want string
	}{
		{"string for int", "[hypervisor.qemu]\ndefault_vcpus = \"2\"\n", `hypervisor.qemu.default_vcpus = "2": wrong type string, want integer`},
		{"int for bool", "[hypervisor.qemu]\n[runtime]\nenable_debug = 1\n", "runtime.enable_debug = 1: wrong type integer, want boolean"},
		{"string for seconds", "[hypervisor.qemu]\n[agent.kata]\ndial_timeout = \"45s\"\n", `agent.kata.dial_timeout = "45s": wrong type string, want integer`},
		{"string for list", "[hypervisor.qemu]\nenable_annotations = \"kernel\"\n", `hypervisor.qemu.enable_annotations = "kernel": wrong type string, want array`},
		{"list element", "[hypervisor.qemu]\nvalid_kernel_paths = [\"/a\", 2]\n", "hypervisor.qemu.valid_kernel_paths[1] = 2: wrong type integer, want string"},
		{"runtime not a table", "runtime = 3\n[hypervisor.qemu]\n", "runtime = 3: must be a table [runtime]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, _, _, err := loadText(t, tt.content)
			if err == nil || !strings.Contains(err.Error(), path+": "+tt.want) {
				t.Errorf("error = %v\nwant it to contain %q", err, path+": "+tt.want)
			}
		})
	}
}

func TestWarnings(t *testing.T) {
	path, cfg, warnings, err := loadText(t, `
top_level_typo = 1
[hypervisor.qemu]
default_memroy = 1024
block_device_driver = "virtio-scsi"
[hypervisor.qemu.extra]
a = 1
b = 2
[agent.kata]
enable_tracing = true
[agent.other]
x = 1
[runtime]
jaeger_endpoint = "http://localhost"
sandbox_bind_mounts = []
[factory]
enable_template = true
template_path = "/run/vc/vm/template"
vm_cache_number = 2
`)
	if err != nil {
		t.Fatalf("LoadFile: %v", err)
	}
	if cfg.Hypervisor.DefaultMemory != 512 {
		t.Errorf("a misspelt key changed default_memory to %d", cfg.Hypervisor.DefaultMemory)
	}
	type kw struct {
		Key  string
		Kind WarningKind
	}
	want := []kw{
		{"top_level_typo", UnknownKey},
		{"hypervisor.qemu.default_memroy", UnknownKey},
		{"hypervisor.qemu.block_device_driver", UnsupportedKataKey},
		{"hypervisor.qemu.extra", UnknownKey},
		{"agent.kata.enable_tracing", UnsupportedKataKey},
		{"agent.other", UnknownKey},
		{"runtime.jaeger_endpoint", UnsupportedKataKey},
		{"runtime.sandbox_bind_mounts", UnsupportedKataKey},
		{"factory.vm_cache_number", UnsupportedKataKey},
	}
	var got []kw
	for _, w := range warnings {
		got = append(got, kw{w.Key, w.Kind})
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("warnings:\n got %v\nwant %v", got, want)
	}
	for _, w := range warnings {
		switch w.Key {
		case "hypervisor.qemu.default_memroy":
			if s, want := w.String(), path+`: unknown key "hypervisor.qemu.default_memroy" ignored`; s != want {
				t.Errorf("String() = %q, want %q", s, want)
			}
		case "hypervisor.qemu.block_device_driver":
			if !strings.Contains(w.String(), "recognised Kata key, not supported by Kasa; ignored") {
				t.Errorf("Kata key warning = %q", w)
			}
		}
	}
}

// Cloud Hypervisor has no driver: its table is refused when the file is
// loaded, not at the first pod start.
func TestCloudHypervisorFileRefused(t *testing.T) {
	path, _, _, err := loadText(t, "[hypervisor.clh]\ndefault_memory = 1024\n")
	want := path + ": hypervisor.clh: Cloud Hypervisor is not supported yet: Kasa has no driver for it; use [hypervisor.qemu]"
	if err == nil || err.Error() != want {
		t.Errorf("err = %v, want %q", err, want)
	}
}

// A Kata Containers QEMU file loads, with warnings for what Kasa lacks.
func TestKataFileLoads(t *testing.T) {
	_, cfg, warnings, err := loadText(t, `
[hypervisor.qemu]
path = "/opt/kata/bin/qemu-system-x86_64"
kernel = "/opt/kata/share/kata-containers/vmlinux.container"
image = "/opt/kata/share/kata-containers/kata-containers.img"
machine_type = "q35"
rootfs_type = "ext4"
enable_annotations = ["enable_iommu", "virtio_fs_extra_args", "kernel_params"]
valid_hypervisor_paths = ["/opt/kata/bin/qemu-system-x86_64"]
kernel_params = ""
firmware = ""
cpu_features = "pmu=off"
default_vcpus = 1
default_maxvcpus = 0
default_bridges = 1
default_memory = 2048
disable_block_device_use = false
shared_fs = "virtio-fs"
virtio_fs_daemon = "/opt/kata/libexec/virtiofsd"
valid_virtio_fs_daemon_paths = ["/opt/kata/libexec/virtiofsd"]
virtio_fs_cache_size = 0
virtio_fs_extra_args = ["--thread-pool-size=1", "-o", "announce_submounts"]
virtio_fs_cache = "auto"
block_device_driver = "virtio-scsi"
enable_iothreads = false
enable_vhost_user_store = false
valid_file_mem_backends = [""]
valid_entropy_sources = ["/dev/urandom", "/dev/random", ""]
msize_9p = 8192
enable_debug = false

[factory]
enable_template = false

[agent.kata]
enable_tracing = false
kernel_modules = []
dial_timeout = 45

[runtime]
enable_debug = false
internetworking_model = "tcfilter"
disable_guest_seccomp = true
sandbox_cgroup_only = false
static_sandbox_resource_mgmt = false
sandbox_bind_mounts = []
vfio_mode = "guest-kernel"
experimental = []
enable_pprof = false
`)
	if err != nil {
		t.Fatalf("a Kata file does not load: %v", err)
	}
	if cfg.Hypervisor.DefaultMemory != 2048 || cfg.Hypervisor.SharedFS != SharedFSVirtioFS {
		t.Errorf("got %+v", cfg.Hypervisor)
	}
	for _, w := range warnings {
		if w.Kind != UnsupportedKataKey {
			t.Errorf("Kata key reported as %v: %s", w.Kind, w)
		}
	}
	// [factory] enable_template and image are Kasa's too: no warning.
	if len(warnings) != 18 {
		t.Errorf("got %d warnings, want 18:\n%v", len(warnings), warnings)
	}
	// The file names an image, which replaces the default initrd.
	if h := cfg.Hypervisor; h.Image != "/opt/kata/share/kata-containers/kata-containers.img" || h.Initrd != "" {
		t.Errorf("image %q, initrd %q: want the file's image and no initrd", h.Image, h.Initrd)
	}
	if !cfg.Runtime.DisableGuestSeccomp {
		t.Error("runtime.disable_guest_seccomp = true did not load")
	}
}

package configuration

import (
	"errors"
	"strings"
	"testing"
)

// Each bad value is reported with the file, the dotted key, the value and
// what is allowed.
func TestValidateBadValues(t *testing.T) {
	tests := []struct {
		name    string
		content string
		want    string // after "<file>: "
	}{
		// Enumerations.
		{"machine_type", "[hypervisor.qemu]\nmachine_type = \"foo\"",
			`hypervisor.qemu.machine_type = "foo": allowed values are q35, pc, microvm`},
		{"shared_fs", "[hypervisor.qemu]\nshared_fs = \"nfs\"",
			`hypervisor.qemu.shared_fs = "nfs": allowed values are virtio-9p, virtio-fs, none`},
		{"accelerator", "[hypervisor.qemu]\naccelerator = \"hvf\"",
			`hypervisor.qemu.accelerator = "hvf": allowed values are auto, kvm, tcg`},
		{"transport", "[hypervisor.qemu]\n[agent.kata]\ntransport = \"tcp\"",
			`agent.kata.transport = "tcp": allowed values are auto, vsock, vhost-user-vsock, virtio-serial`},
		{"internetworking_model", "[hypervisor.qemu]\n[runtime]\ninternetworking_model = \"bridged\"",
			`runtime.internetworking_model = "bridged": allowed values are tcfilter, macvtap, none`},

		// Ranges.
		{"default_vcpus low", "[hypervisor.qemu]\ndefault_vcpus = 0",
			"hypervisor.qemu.default_vcpus = 0: allowed range is 1..255"},
		{"default_vcpus high", "[hypervisor.qemu]\ndefault_vcpus = 256",
			"hypervisor.qemu.default_vcpus = 256: allowed range is 1..255"},
		{"default_maxvcpus", "[hypervisor.qemu]\ndefault_vcpus = 4\ndefault_maxvcpus = 2",
			"hypervisor.qemu.default_maxvcpus = 2: allowed values are 0 (the number of host CPUs) or default_vcpus (4)..255"},
		{"default_memory", "[hypervisor.qemu]\ndefault_memory = 64",
			"hypervisor.qemu.default_memory = 64: allowed range is 128..4194304"},
		{"msize_9p", "[hypervisor.qemu]\nmsize_9p = 1024",
			"hypervisor.qemu.msize_9p = 1024: allowed range is 4096..1048576"},
		{"dial_timeout zero", "[hypervisor.qemu]\n[agent.kata]\ndial_timeout = 0",
			"agent.kata.dial_timeout = 0: allowed range is 1..600 (seconds)"},
		{"dial_timeout high", "[hypervisor.qemu]\n[agent.kata]\ndial_timeout = 601",
			"agent.kata.dial_timeout = 601: allowed range is 1..600 (seconds)"},
		{"dial_timeout negative", "[hypervisor.qemu]\n[agent.kata]\ndial_timeout = -5",
			"agent.kata.dial_timeout = -5: allowed range is 1..600 (seconds)"},
		{"dial_timeout huge", "[hypervisor.qemu]\n[agent.kata]\ndial_timeout = 99999999999999",
			"agent.kata.dial_timeout = 9223372036: allowed range is 1..600 (seconds)"},

		// Paths and strings.
		{"relative path", "[hypervisor.qemu]\npath = \"qemu-system-x86_64\"",
			`hypervisor.qemu.path = "qemu-system-x86_64": must be an absolute path`},
		{"relative kernel", "[hypervisor.qemu]\nkernel = \"vmlinuz\"",
			`hypervisor.qemu.kernel = "vmlinuz": must be an absolute path`},
		{"empty initrd", "[hypervisor.qemu]\ninitrd = \"\"",
			`hypervisor.qemu.initrd = "": an absolute path is required`},
		{"relative firmware", "[hypervisor.qemu]\nfirmware = \"qboot.rom\"",
			`hypervisor.qemu.firmware = "qboot.rom": must be an absolute path`},
		{"debug console over virtio-serial", "[hypervisor.qemu]\nrootless = false\n[agent.kata]\ndebug_console_enabled = true\ntransport = \"virtio-serial\"",
			`agent.kata.debug_console_enabled = true: the debug console (kasa exec) is a vsock port: agent.kata.transport "virtio-serial" has none`},
		{"virtio-serial under a rootless QEMU", "[hypervisor.qemu]\n[agent.kata]\ntransport = \"virtio-serial\"",
			`agent.kata.transport = "virtio-serial": hypervisor.qemu.rootless = true`},
		{"9p under a rootless QEMU", "[hypervisor.qemu]\nshared_fs = \"virtio-9p\"",
			`hypervisor.qemu.shared_fs = "virtio-9p": rootless = true: virtio-9p is served by QEMU itself, which would need root`},
		{"seccompsandbox with spaces", "[hypervisor.qemu]\nseccompsandbox = \"on, spawn=deny\"",
			`hypervisor.qemu.seccompsandbox = "on, spawn=deny": QEMU's -sandbox value`},
		{"virtio-fs without daemon", "[hypervisor.qemu]\nshared_fs = \"virtio-fs\"\nvirtio_fs_daemon = \"\"",
			`hypervisor.qemu.virtio_fs_daemon = "": an absolute path is required`},
		{"kernel_params control", "[hypervisor.qemu]\nkernel_params = \"quiet\\ninit=/bin/sh\"",
			`hypervisor.qemu.kernel_params = "quiet\ninit=/bin/sh": must not contain control characters`},
		{"bad regexp", "[hypervisor.qemu]\nenable_annotations = [\"kernel\", \"default_(\"]",
			`hypervisor.qemu.enable_annotations[1] = "default_(": invalid regular expression: error parsing regexp`},
		{"bad glob", "[hypervisor.qemu]\nvalid_kernel_paths = [\"/boot/[\"]",
			`hypervisor.qemu.valid_kernel_paths[0] = "/boot/[": invalid glob pattern: syntax error in pattern`},
		{"kernel module", "[hypervisor.qemu]\n[agent.kata]\nkernel_modules = [\"../evil x=1\"]",
			`agent.kata.kernel_modules[0] = "../evil x=1": want "module_name param=value ...`},
		{"disable_new_netns", "[hypervisor.qemu]\n[runtime]\ndisable_new_netns = true",
			`runtime.disable_new_netns = true: requires runtime.internetworking_model = "none"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, cfg, _, err := loadText(t, tt.content+"\n")
			if err == nil {
				t.Fatalf("loaded without error: %+v", cfg)
			}
			if want := path + ": " + tt.want; !strings.Contains(err.Error(), want) {
				t.Errorf("error:\n%v\nwant it to contain:\n%s", err, want)
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.File != path {
				t.Errorf("error %v is not a *FieldError for %s", err, path)
			}
		})
	}
}

func TestValidateJoinsAllErrors(t *testing.T) {
	path, _, _, err := loadText(t, `
[hypervisor.qemu]
machine_type = "foo"
default_memory = 1
[agent.kata]
dial_timeout = 0
[runtime]
internetworking_model = "bridged"
`)
	if err == nil {
		t.Fatal("no error")
	}
	var joined interface{ Unwrap() []error }
	if !errors.As(err, &joined) {
		t.Fatalf("error %v is not joined", err)
	}
	errs := joined.Unwrap()
	wantKeys := []string{"hypervisor.qemu.machine_type", "hypervisor.qemu.default_memory", "agent.kata.dial_timeout", "runtime.internetworking_model"}
	if len(errs) != len(wantKeys) {
		t.Fatalf("got %d errors, want %d:\n%v", len(errs), len(wantKeys), err)
	}
	for i, e := range errs {
		var fe *FieldError
		if !errors.As(e, &fe) || fe.Key != wantKeys[i] || fe.File != path {
			t.Errorf("error %d = %v, want a FieldError for %s in %s", i, e, wantKeys[i], path)
		}
	}
	if n := strings.Count(err.Error(), "\n") + 1; n != len(wantKeys) {
		t.Errorf("message has %d lines, want one per error:\n%v", n, err)
	}
}

func TestValidateEmbeddedLabel(t *testing.T) {
	cfg := Default()
	cfg.Hypervisor.MachineType = "foo"
	err := cfg.Validate()
	if err == nil || !strings.HasPrefix(err.Error(), "embedded configuration.toml: hypervisor.qemu.machine_type") {
		t.Errorf("error = %v, want it to name the embedded defaults", err)
	}
}

func TestValidateUnknownHypervisor(t *testing.T) {
	cfg := Default()
	cfg.HypervisorName = "firecracker"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "supported names are qemu") {
		t.Errorf("error = %v", err)
	}
}

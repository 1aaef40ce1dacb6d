package configuration

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

func TestGoDefaultsAreValid(t *testing.T) {
	for _, name := range hypervisorNames {
		t.Run(string(name), func(t *testing.T) {
			if err := defaultConfig(name).Validate(); err != nil {
				t.Fatalf("defaults for %s are invalid:\n%v", name, err)
			}
		})
	}
}

// The shipped file and the Go defaults must not drift: a key missing from
// one of them would silently change what an operator gets.
func TestEmbeddedFileEqualsGoDefaults(t *testing.T) {
	cfg, warnings, err := decode([]source{{path: "", data: embeddedFile}})
	if err != nil {
		t.Fatalf("embedded configuration.toml: %v", err)
	}
	if len(warnings) > 0 {
		t.Errorf("embedded configuration.toml has warnings: %v", warnings)
	}
	for key, file := range cfg.Origins {
		if file != "" {
			t.Errorf("origin of %s = %q, want the embedded file", key, file)
		}
	}
	want := defaultConfig(HypervisorQEMU)
	want.Origins = cfg.Origins
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("embedded file decodes to\n%+v\nGo defaults are\n%+v", cfg, want)
	}
	if got := Default(); !reflect.DeepEqual(got, cfg) || got.Path != "" {
		t.Errorf("Default() = %+v, want the embedded file %+v", got, cfg)
	}
}

// Every HypervisorConfig key appears in the shipped file, set or as a
// commented example, so operators can discover it.
func TestEmbeddedFileDocumentsEveryKey(t *testing.T) {
	text := string(DefaultFile())
	for _, typ := range []reflect.Type{reflect.TypeFor[HypervisorConfig](), reflect.TypeFor[agentFile](), reflect.TypeFor[RuntimeConfig]()} {
		for key := range tomlFields(typ) {
			if !strings.Contains(text, "\n"+key+" = ") && !strings.Contains(text, "\n#"+key+" = ") {
				t.Errorf("key %s is not in configuration.toml", key)
			}
		}
	}
}

func TestDefaultReturnsCopies(t *testing.T) {
	a := Default()
	a.Hypervisor.DefaultVCPUs = 7
	a.Hypervisor.EnableAnnotations = append(a.Hypervisor.EnableAnnotations, "x")
	if b := Default(); b.Hypervisor.DefaultVCPUs != 1 || len(b.Hypervisor.EnableAnnotations) != 0 {
		t.Errorf("Default() shares state between calls: %+v", b.Hypervisor)
	}
}

func TestCloneIsDeep(t *testing.T) {
	a := Default()
	a.Hypervisor.EnableAnnotations = []string{"a"}
	a.Agent.KernelModules = []string{"m"}
	b := a.Clone()
	b.Hypervisor.EnableAnnotations[0] = "b"
	b.Agent.KernelModules[0] = "n"
	if a.Hypervisor.EnableAnnotations[0] != "a" || a.Agent.KernelModules[0] != "m" {
		t.Errorf("Clone shares slices: %+v", a)
	}
}

func TestMaxVCPUs(t *testing.T) {
	host := min(runtime.NumCPU(), maxVCPULimit)
	tests := []struct {
		vcpus, maxvcpus, want int
	}{
		{1, 0, max(host, 1)},
		{1, 4, 4},
		{8, 4, 8},
		{1, 1000, maxVCPULimit},
	}
	for _, tt := range tests {
		h := HypervisorConfig{DefaultVCPUs: tt.vcpus, DefaultMaxVCPUs: tt.maxvcpus}
		if got := h.MaxVCPUs(); got != tt.want {
			t.Errorf("MaxVCPUs(vcpus=%d, maxvcpus=%d) = %d, want %d", tt.vcpus, tt.maxvcpus, got, tt.want)
		}
	}
}

func TestKernelParamsList(t *testing.T) {
	h := HypervisorConfig{KernelParams: " quiet  console=hvc0\tpanic=1 "}
	if got, want := h.KernelParamsList(), []string{"quiet", "console=hvc0", "panic=1"}; !reflect.DeepEqual(got, want) {
		t.Errorf("KernelParamsList() = %q, want %q", got, want)
	}
}

func TestCheckPaths(t *testing.T) {
	dir := t.TempDir()
	qemu := filepath.Join(dir, "qemu")
	kernel := filepath.Join(dir, "vmlinuz")
	mustWrite(t, qemu, "#!/bin/sh\n", 0o755)
	mustWrite(t, kernel, "", 0o644)

	cfg := Default()
	cfg.Hypervisor.Path = qemu
	cfg.Hypervisor.Kernel = kernel
	cfg.Hypervisor.Initrd = filepath.Join(dir, "missing.img")
	errs := cfg.CheckPaths()
	if len(errs) != 1 {
		t.Fatalf("CheckPaths() = %v, want one error for the initrd", errs)
	}
	if msg := errs[0].Error(); !strings.Contains(msg, "hypervisor.qemu.initrd") || !strings.Contains(msg, "missing.img") {
		t.Errorf("error %q does not name the key and the file", msg)
	}
	if !errors.Is(errs[0], os.ErrNotExist) {
		t.Errorf("error %v does not wrap os.ErrNotExist", errs[0])
	}

	cfg.Hypervisor.Path = kernel // not executable
	cfg.Hypervisor.Initrd = kernel
	errs = cfg.CheckPaths()
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "hypervisor.qemu.path") {
		t.Errorf("CheckPaths() = %v, want a not-executable error for hypervisor.qemu.path", errs)
	}
}

func mustWrite(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

package configuration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeDropIns writes the main file and its config.d files under a
// temporary directory and returns the main file's path.
func writeDropIns(t *testing.T, main string, dropIns map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "configuration.toml")
	mustWrite(t, path, main, 0o644)
	for name, content := range dropIns {
		mustWrite(t, filepath.Join(dir, DropInDirName, name), content, 0o644)
	}
	return path
}

func settingOf(t *testing.T, cfg *Config, key string) Setting {
	t.Helper()
	for _, s := range cfg.Settings() {
		if s.Key == key {
			return s
		}
	}
	t.Fatalf("no setting %s", key)
	return Setting{}
}

// Drop-ins are merged in lexical order, key by key, and every value names
// the file it came from.
func TestDropInsMergeInOrder(t *testing.T) {
	path := writeDropIns(t, "[hypervisor.qemu]\ndefault_memory = 1024\ndefault_vcpus = 2\n[runtime]\nenable_debug = true\n",
		map[string]string{
			"20-memory.toml":       "[hypervisor.qemu]\ndefault_memory = 2048\n",
			"10-memory.toml":       "[hypervisor.qemu]\ndefault_memory = 768\nkernel_params = \"quiet\"\n",
			"30-agent.toml":        "[agent.kata]\ndial_timeout = 90\n",
			"README":               "not toml, not read",
			"40-off.toml.disabled": "[hypervisor.qemu]\ndefault_memory = 4\n",
		})
	cfg, warnings, err := LoadFile(path)
	if err != nil || len(warnings) > 0 {
		t.Fatalf("LoadFile: %v, warnings %v", err, warnings)
	}
	dir := filepath.Join(filepath.Dir(path), DropInDirName)
	h := cfg.Hypervisor
	if h.DefaultMemory != 2048 || h.DefaultVCPUs != 2 || h.KernelParams != "quiet" || cfg.Agent.DialTimeout.Seconds() != 90 || !cfg.Runtime.EnableDebug {
		t.Errorf("merged config = %+v %+v %+v", h, cfg.Agent, cfg.Runtime)
	}
	wantDropIns := []string{filepath.Join(dir, "10-memory.toml"), filepath.Join(dir, "20-memory.toml"), filepath.Join(dir, "30-agent.toml")}
	if strings.Join(cfg.DropIns, " ") != strings.Join(wantDropIns, " ") {
		t.Errorf("DropIns = %v, want %v", cfg.DropIns, wantDropIns)
	}
	for key, want := range map[string]string{
		"hypervisor.qemu.default_memory": wantDropIns[1],
		"hypervisor.qemu.kernel_params":  wantDropIns[0],
		"hypervisor.qemu.default_vcpus":  path,
		"agent.kata.dial_timeout":        wantDropIns[2],
		"runtime.enable_debug":           path,
		"hypervisor.qemu.machine_type":   "default",
	} {
		if s := settingOf(t, cfg, key); s.Origin != want {
			t.Errorf("%s origin = %q, want %q", key, s.Origin, want)
		}
	}
	if s := settingOf(t, cfg, "hypervisor.qemu.default_memory"); s.Value != 2048 {
		t.Errorf("default_memory setting = %v", s.Value)
	}
}

// A bad value, a foreign hypervisor table or an unknown key in a drop-in is
// reported against the drop-in, not the main file.
func TestDropInErrorsNameTheirFile(t *testing.T) {
	tests := []struct {
		name, dropIn, want string
	}{
		{"bad value", "[hypervisor.qemu]\ndefault_memory = 1\n", "hypervisor.qemu.default_memory = 1: allowed range is 128..4194304"},
		{"bad type", "[runtime]\nenable_debug = \"yes\"\n", "runtime.enable_debug = \"yes\": wrong type string, want boolean"},
		{"other hypervisor", "[hypervisor.clh]\n", "hypervisor.clh: Cloud Hypervisor is not supported yet"},
		{"two hypervisors", "[hypervisor.qemu]\n[hypervisor.clh]\n", "exactly one [hypervisor.<name>] table is required, found 2"},
		{"bad TOML", "[runtime\n", "failed to read config from"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeDropIns(t, "[hypervisor.qemu]\n", map[string]string{"50-x.toml": tt.dropIn})
			dropIn := filepath.Join(filepath.Dir(path), DropInDirName, "50-x.toml")
			_, _, err := LoadFile(path)
			if err == nil || !strings.Contains(err.Error(), dropIn) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want %q naming %s", err, tt.want, dropIn)
			}
		})
	}

	path := writeDropIns(t, "[hypervisor.qemu]\n", map[string]string{"50-x.toml": "[runtime]\nfrobnicate = 1\n"})
	_, warnings, err := LoadFile(path)
	if err != nil || len(warnings) != 1 || !strings.HasPrefix(warnings[0].String(), filepath.Join(filepath.Dir(path), DropInDirName, "50-x.toml")+": ") {
		t.Errorf("warnings = %v, err %v: want one naming the drop-in", warnings, err)
	}
}

func TestDropInUnreadable(t *testing.T) {
	path := writeDropIns(t, "[hypervisor.qemu]\n", nil)
	if err := os.MkdirAll(filepath.Join(filepath.Dir(path), DropInDirName, "50-dir.toml"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadFile(path); err == nil || !strings.Contains(err.Error(), "50-dir.toml") || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("err = %v, want the directory named", err)
	}
}

// With no file anywhere, the built-in copy is used and /etc/kasa/config.d
// still applies.
func TestDropInsOverEmbeddedDefaults(t *testing.T) {
	isolate(t)
	mustWrite(t, filepath.Join(DropInDir(""), "50-memory.toml"), "[hypervisor.qemu]\ndefault_memory = 640\n", 0o644)
	cfg, warnings, err := Load("")
	if err != nil || len(warnings) > 0 {
		t.Fatalf("Load: %v, warnings %v", err, warnings)
	}
	if cfg.Path != "" || cfg.Hypervisor.DefaultMemory != 640 || len(cfg.DropIns) != 1 {
		t.Errorf("got path %q, memory %d, drop-ins %v", cfg.Path, cfg.Hypervisor.DefaultMemory, cfg.DropIns)
	}
	if s := settingOf(t, cfg, "hypervisor.qemu.path"); s.Origin != "embedded configuration.toml" {
		t.Errorf("path origin = %q", s.Origin)
	}
}

// The guest's root is one of initrd and image: a file that names one
// replaces the other's earlier value, whoever set it; one file naming both,
// or an image on microvm, is an error that names the key.
func TestOneGuestRoot(t *testing.T) {
	path := writeDropIns(t, "[hypervisor.qemu]\ninitrd = \"/main/initrd.img\"\n",
		map[string]string{"50-image.toml": "[hypervisor.qemu]\nimage = \"/d/guest.img\"\n"})
	cfg, _, err := LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dropIn := filepath.Join(filepath.Dir(path), DropInDirName, "50-image.toml")
	if h := cfg.Hypervisor; h.Image != "/d/guest.img" || h.Initrd != "" {
		t.Errorf("image %q, initrd %q: want the drop-in's image alone", h.Image, h.Initrd)
	}
	if s := settingOf(t, cfg, "hypervisor.qemu.initrd"); s.Origin != dropIn || s.Value != "" {
		t.Errorf("initrd setting %+v: want emptied by %s", s, dropIn)
	}

	// And back: a later file's initrd replaces the image.
	path = writeDropIns(t, "[hypervisor.qemu]\nimage = \"/main/guest.img\"\n",
		map[string]string{"50-initrd.toml": "[hypervisor.qemu]\ninitrd = \"/d/initrd.img\"\n"})
	if cfg, _, err = LoadFile(path); err != nil {
		t.Fatal(err)
	}
	if h := cfg.Hypervisor; h.Image != "" || h.Initrd != "/d/initrd.img" {
		t.Errorf("image %q, initrd %q: want the drop-in's initrd alone", h.Image, h.Initrd)
	}

	for name, tc := range map[string]struct{ file, want string }{
		"both":     {"[hypervisor.qemu]\ninitrd = \"/k/initrd.img\"\nimage = \"/k/guest.img\"\n", "hypervisor.qemu.image"},
		"microvm":  {"[hypervisor.qemu]\nimage = \"/k/guest.img\"\nmachine_type = \"microvm\"\n", "NVDIMM"},
		"relative": {"[hypervisor.qemu]\nimage = \"guest.img\"\n", "hypervisor.qemu.image"},
	} {
		if _, _, _, err := loadText(t, tc.file); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one naming %q", name, err, tc.want)
		}
	}
}

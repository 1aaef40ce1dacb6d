package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/kasa-runtime/kasa/agent/api"
)

func TestCommandLine(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.toml")
	os.WriteFile(bad, []byte("[hypervisor.qemu]\nmachine_type = \"foo\"\n"), 0o644)
	for _, tc := range []struct {
		args     []string
		code     int
		inStdout string
		inStderr string
	}{
		{[]string{"--help"}, 0, "commands:", ""},
		{[]string{"version"}, 0, "agent API v" + strconv.Itoa(int(api.APIVersion)), ""},
		{nil, 2, "", "usage:"},
		{[]string{"frobnicate"}, 2, "", `unknown command "frobnicate"`},
		{[]string{"--config", bad, "env"}, 1, "", "hypervisor.qemu.machine_type"},
		{[]string{"--config", "/nonexistent.toml", "check"}, 1, "", "/nonexistent.toml"},
		{[]string{"--help"}, 0, "monitor [--listen ADDR]", ""},
		{[]string{"monitor", "extra"}, 2, "", `unexpected argument "extra"`},
		{[]string{"monitor", "--shim-timeout", "0s"}, 2, "", "--shim-timeout must be positive"},
		{[]string{"monitor", "--listen", "256.0.0.1:http"}, 1, "", "kasa monitor:"},
	} {
		var out, errb bytes.Buffer
		code := run(tc.args, &out, &errb)
		if code != tc.code || !strings.Contains(out.String(), tc.inStdout) || !strings.Contains(errb.String(), tc.inStderr) {
			t.Errorf("kasa %v: code %d, stdout %q, stderr %q; want code %d with %q / %q",
				tc.args, code, out.String(), errb.String(), tc.code, tc.inStdout, tc.inStderr)
		}
	}
}

func TestEnvShowsEmbeddedDefaults(t *testing.T) {
	t.Setenv("KASA_CONF_FILE", "")
	var out, errb bytes.Buffer
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "c.toml")
	os.WriteFile(cfgFile, []byte("[hypervisor.qemu]\ndefault_memory = 1024\nfrobnicate = 1\n"), 0o644)
	dropIn := filepath.Join(dir, "config.d", "50-vcpus.toml")
	os.Mkdir(filepath.Dir(dropIn), 0o755)
	os.WriteFile(dropIn, []byte("[hypervisor.qemu]\ndefault_vcpus = 2\n"), 0o644)
	if code := run([]string{"--config", cfgFile, "env"}, &out, &errb); code != 0 {
		t.Fatalf("code %d: %s", code, errb.String())
	}
	var env struct {
		Source   string   `json:"source"`
		DropIns  []string `json:"drop_ins"`
		Settings []struct {
			Key    string `json:"key"`
			Value  any    `json:"value"`
			Origin string `json:"origin"`
		} `json:"settings"`
	}
	if err := json.Unmarshal(out.Bytes(), &env); err != nil || !strings.Contains(errb.String(), "frobnicate") {
		t.Fatalf("stdout %q (%v) stderr %q", out.String(), err, errb.String())
	}
	got := map[string]string{}
	for _, s := range env.Settings {
		got[s.Key] = fmt.Sprintf("%v from %s", s.Value, s.Origin)
	}
	for key, want := range map[string]string{
		"hypervisor.qemu.default_memory": "1024 from " + cfgFile,
		"hypervisor.qemu.default_vcpus":  "2 from " + dropIn,
		"hypervisor.qemu.machine_type":   "q35 from default",
	} {
		if got[key] != want {
			t.Errorf("%s = %q, want %q", key, got[key], want)
		}
	}
	if env.Source != cfgFile || len(env.DropIns) != 1 || env.DropIns[0] != dropIn {
		t.Errorf("source %q drop-ins %v", env.Source, env.DropIns)
	}
}

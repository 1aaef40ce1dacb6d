package main

import (
	"bytes"
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
	cfgFile := filepath.Join(t.TempDir(), "c.toml")
	os.WriteFile(cfgFile, []byte("[hypervisor.qemu]\ndefault_memory = 1024\nfrobnicate = 1\n"), 0o644)
	if code := run([]string{"--config", cfgFile, "env"}, &out, &errb); code != 0 {
		t.Fatalf("code %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), `"DefaultMemory": 1024`) || !strings.Contains(errb.String(), "frobnicate") {
		t.Fatalf("stdout %q stderr %q", out.String(), errb.String())
	}
}

package virtcontainers

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/containerd/containerd/errdefs"

	"github.com/kasa-runtime/kasa/configuration"
)

func TestAgentKernelParams(t *testing.T) {
	if p := agentKernelParams(configuration.AgentConfig{}); len(p) != 0 {
		t.Errorf("defaults add %q to the kernel command line", p)
	}
	p := agentKernelParams(configuration.AgentConfig{EnableDebug: true, DebugConsoleEnabled: true})
	if !slices.Equal(p, []string{"kasa.log_level=debug", "kasa.debug_console"}) {
		t.Errorf("params %q", p)
	}
}

func TestFindSandbox(t *testing.T) {
	old := SandboxStateRoot
	SandboxStateRoot = t.TempDir()
	t.Cleanup(func() { SandboxStateRoot = old })
	for _, id := range []string{"9c1e5d00aa", "9c1e77bb", "abc", "abcdef"} {
		if err := os.Mkdir(filepath.Join(SandboxStateRoot, id), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(SandboxStateRoot, "9c1e5d-file"), nil, 0o600)
	for prefix, want := range map[string]string{"9c1e5": "9c1e5d00aa", "9c1e7": "9c1e77bb", "abc": "abc", "abcd": "abcdef"} {
		if got, err := FindSandbox(prefix); err != nil || got != want {
			t.Errorf("FindSandbox(%q) = %q, %v; want %q", prefix, got, err, want)
		}
	}
	for prefix, want := range map[string]error{"9c1e": errdefs.ErrInvalidArgument, "ff": errdefs.ErrNotFound, "": errdefs.ErrInvalidArgument, "../x": errdefs.ErrInvalidArgument} {
		if _, err := FindSandbox(prefix); !errors.Is(err, want) {
			t.Errorf("FindSandbox(%q): %v, want %v", prefix, err, want)
		}
	}
}

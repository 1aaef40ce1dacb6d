// Package runtime holds the files that register Kasa with container
// managers; its test checks they say what the shim and its tests rely on.
package runtime

import (
	"testing"

	"github.com/BurntSushi/toml"
)

// TestContainerdSnippet: containerd-kata.toml (1.6/1.7, config version 2)
// and containerd2-kata.toml (2.x, version 3) register the kata handler in
// the CRI plugin of their version.
func TestContainerdSnippet(t *testing.T) {
	for file, want := range map[string]struct {
		version int
		plugin  string
	}{
		"containerd-kata.toml":  {2, "io.containerd.grpc.v1.cri"},
		"containerd2-kata.toml": {3, "io.containerd.cri.v1.runtime"},
	} {
		var cfg struct {
			Version int
			Plugins map[string]struct {
				Containerd struct {
					Runtimes map[string]struct {
						RuntimeType    string   `toml:"runtime_type"`
						PodAnnotations []string `toml:"pod_annotations"`
					}
				}
			}
		}
		if _, err := toml.DecodeFile(file, &cfg); err != nil {
			t.Fatal(err)
		}
		kata, ok := cfg.Plugins[want.plugin].Containerd.Runtimes["kata"]
		if cfg.Version != want.version || len(cfg.Plugins) != 1 || !ok {
			t.Fatalf("%s: want version %d and %s's runtimes.kata only, got %+v", file, want.version, want.plugin, cfg)
		}
		if kata.RuntimeType != "io.containerd.kasa.v2" || len(kata.PodAnnotations) != 1 || kata.PodAnnotations[0] != "io.katacontainers.*" {
			t.Errorf("%s: runtimes.kata = %+v", file, kata)
		}
		if cfg.Plugins[want.plugin].Containerd.Runtimes["runc"].RuntimeType != "io.containerd.runc.v2" {
			t.Errorf("%s: runc not restated", file)
		}
	}
}

func TestCRIOSnippet(t *testing.T) {
	var cfg struct {
		Crio struct {
			Runtime struct {
				Runtimes map[string]struct {
					RuntimePath        string   `toml:"runtime_path"`
					RuntimeType        string   `toml:"runtime_type"`
					AllowedAnnotations []string `toml:"allowed_annotations"`
				}
			}
		}
	}
	if _, err := toml.DecodeFile("crio-kata.conf", &cfg); err != nil {
		t.Fatal(err)
	}
	kata := cfg.Crio.Runtime.Runtimes["kata"]
	if kata.RuntimeType != "vm" || kata.RuntimePath != "/usr/bin/containerd-shim-kasa-v2" {
		t.Errorf("crio runtimes.kata = %+v", kata)
	}
	// CRI-O ignores the whole handler when an entry is not one of its own
	// annotation names ("invalid allowed_annotation"); pod annotations
	// reach the shim without any.
	if len(kata.AllowedAnnotations) != 0 {
		t.Errorf("allowed_annotations = %v: CRI-O would ignore the handler", kata.AllowedAnnotations)
	}
}

// Package runtime holds the files that register Kasa with container
// managers; its test checks they say what the shim and its tests rely on.
package runtime

import (
	"testing"

	"github.com/BurntSushi/toml"
)

func TestContainerdSnippet(t *testing.T) {
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
	if _, err := toml.DecodeFile("containerd-kata.toml", &cfg); err != nil {
		t.Fatal(err)
	}
	kata, ok := cfg.Plugins["io.containerd.grpc.v1.cri"].Containerd.Runtimes["kata"]
	if cfg.Version != 2 || !ok {
		t.Fatalf("want version 2 and runtimes.kata, got %+v", cfg)
	}
	if kata.RuntimeType != "io.containerd.kasa.v2" || len(kata.PodAnnotations) != 1 || kata.PodAnnotations[0] != "io.katacontainers.*" {
		t.Errorf("runtimes.kata = %+v", kata)
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

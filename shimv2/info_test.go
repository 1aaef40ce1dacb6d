package shimv2

import (
	"bytes"
	"encoding/json"
	"slices"
	"testing"

	"github.com/containerd/containerd/api/types"
	"github.com/opencontainers/runc/libcontainer/specconv"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"google.golang.org/protobuf/proto"
)

// -info answers what containerd 2.x decodes: a RuntimeInfo whose features
// are OCI features under containerd's type URL, listing "rro" (so the CRI
// plugin allows recursive read-only mounts) and no option Kasa refuses or
// the guest's libcontainer does not know.
func TestRuntimeInfo(t *testing.T) {
	var out bytes.Buffer
	if code, ok := OwnCommand([]string{"containerd-shim-kasa-v2", "-info"}, &out); !ok || code != 0 {
		t.Fatalf("-info: handled %v, code %d", ok, code)
	}
	var info types.RuntimeInfo
	if err := proto.Unmarshal(out.Bytes(), &info); err != nil {
		t.Fatal(err)
	}
	if info.Name != RuntimeType || info.GetFeatures().GetTypeUrl() != "types.containerd.io/opencontainers/runtime-spec/1/features/Features" {
		t.Fatalf("info = %v", &info)
	}
	var f features.Features
	if err := json.Unmarshal(info.GetFeatures().GetValue(), &f); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(f.MountOptions, "rro") || slices.Contains(f.MountOptions, "rshared") || slices.Contains(f.MountOptions, "shared") {
		t.Errorf("mount options %v", f.MountOptions)
	}
	want := slices.DeleteFunc(specconv.KnownMountOptions(), func(o string) bool { return o == "shared" || o == "rshared" })
	if !slices.Equal(f.MountOptions, want) {
		t.Errorf("mount options %q, want the guest libcontainer's %q less shared and rshared", f.MountOptions, want)
	}
	if f.Linux != nil {
		t.Errorf("Linux features %+v: containerd would offer user namespaces", f.Linux)
	}
}

package virtcontainers

import (
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/kasa-runtime/kasa/virtcontainers/fsshare"
)

// What the share makes of a volume's OCI options, as containerd (CRI) and
// other callers write them, and what is refused with its reason.
func TestVolumeFor(t *testing.T) {
	for _, tc := range []struct {
		name    string
		options []string
		want    fsshare.Volume
		err     string
	}{
		{"CRI default", []string{"rbind", "rprivate", "rw"}, fsshare.Volume{Recursive: true}, ""},
		{"no options: a plain bind", nil, fsshare.Volume{}, ""},
		{"non-recursive read-only", []string{"rbind", "rprivate", "ro"}, fsshare.Volume{Recursive: true, ReadOnly: true}, ""},
		{"recursive read-only (CRI recursive_read_only)", []string{"rbind", "rprivate", "rro"}, fsshare.Volume{Recursive: true, RecursiveReadOnly: true}, ""},
		{"later options win", []string{"bind", "ro", "rw", "rro", "rrw", "noexec", "exec"}, fsshare.Volume{}, ""},
		{"noexec", []string{"rbind", "noexec", "nosuid", "nodev"}, fsshare.Volume{Recursive: true, NoExec: true}, ""},
		{"HostToContainer", []string{"rbind", "rslave", "ro"}, fsshare.Volume{Recursive: true, ReadOnly: true, FollowHost: true}, ""},
		{"slave, then private", []string{"rbind", "slave", "rprivate"}, fsshare.Volume{Recursive: true}, ""},
		{"unbindable stays private on the host", []string{"rbind", "runbindable"}, fsshare.Volume{Recursive: true}, ""},
		{"Bidirectional", []string{"rbind", "rshared", "rw"}, fsshare.Volume{}, `mount /data: propagation "rshared" (Kubernetes mountPropagation: Bidirectional) is not possible in a VM`},
		{"shared, even if made private later", []string{"bind", "shared", "private"}, fsshare.Volume{}, `propagation "shared"`},
		{"rro with rslave", []string{"rbind", "rslave", "rro"}, fsshare.Volume{}, `mount /data: recursive read-only needs private propagation, not "rslave"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := volumeFor(specs.Mount{Destination: "/data", Type: "bind", Source: "/srv/data", Options: tc.options})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			tc.want.Source = "/srv/data"
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func TestCheckRootfsPropagation(t *testing.T) {
	for p, ok := range map[string]bool{"": true, "rslave": true, "private": true, "rprivate": true, "shared": false, "rshared": false} {
		err := checkRootfsPropagation(&specs.Spec{Linux: &specs.Linux{RootfsPropagation: p}})
		if (err == nil) != ok {
			t.Errorf("rootfsPropagation %q: %v", p, err)
		} else if err != nil && !strings.Contains(err.Error(), "not possible in a VM") {
			t.Errorf("rootfsPropagation %q: the error does not say why: %v", p, err)
		}
	}
	if err := checkRootfsPropagation(&specs.Spec{}); err != nil {
		t.Errorf("no linux section: %v", err)
	}
}

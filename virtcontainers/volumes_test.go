package virtcontainers

import (
	"reflect"
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

// The mounts below a volume's source become binds of their own in the
// guest, after the volume's, with its propagation and their own
// read-only state, unless the volume is recursively read-only.
func TestGuestSpecSubmounts(t *testing.T) {
	in := hostSpec()
	in.Mounts[1].Options = []string{"rbind", "rslave", "ro"}
	subs := []fsshare.Submount{{Path: "sub"}, {Path: "sub/deeper", ReadOnly: true}}
	out, _, err := guestSpec(in, "/r", map[int]fsshare.Bound{1: {GuestPath: "/run/kasa/shared/c1/volumes/1-data", Submounts: subs}, 2: {GuestPath: "/y"}})
	if err != nil {
		t.Fatal(err)
	}
	want := []specs.Mount{
		in.Mounts[0],
		{Destination: "/data", Type: "bind", Source: "/run/kasa/shared/c1/volumes/1-data", Options: []string{"rbind", "rslave", "ro"}},
		{Destination: "/data/sub", Type: "bind", Source: "/run/kasa/shared/c1/volumes/1-data/sub", Options: []string{"rbind", "rslave"}},
		{Destination: "/data/sub/deeper", Type: "bind", Source: "/run/kasa/shared/c1/volumes/1-data/sub/deeper", Options: []string{"rbind", "rslave", "ro"}},
		{Destination: "/etc/hosts", Source: "/y", Options: []string{"bind"}},
	}
	if !reflect.DeepEqual(out.Mounts, want) {
		t.Errorf("mounts:\n%+v\nwant\n%+v", out.Mounts, want)
	}

	in.Mounts[1].Options = []string{"rbind", "rprivate", "rro"}
	out, _, err = guestSpec(in, "/r", map[int]fsshare.Bound{1: {GuestPath: "/g", Submounts: subs}, 2: {GuestPath: "/y"}})
	if err != nil || len(out.Mounts) != len(in.Mounts) {
		t.Errorf("rro: %d mounts (%v), want no more than the spec's %d", len(out.Mounts), err, len(in.Mounts))
	}
}

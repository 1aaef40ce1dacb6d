package sandbox

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/agent/api"
)

func TestParseMountOptions(t *testing.T) {
	flags, prop, data := parseMountOptions([]string{"ro", "nosuid", "nodev", "trans=virtio", "rshared", "version=9p2000.L", "rw", "noexec", ""})
	if flags != unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC {
		t.Errorf("flags %#x", flags)
	}
	if prop != unix.MS_SHARED|unix.MS_REC {
		t.Errorf("propagation %#x", prop)
	}
	if data != "trans=virtio,version=9p2000.L" {
		t.Errorf("data %q", data)
	}
}

func TestResolveStorage(t *testing.T) {
	ok := []struct {
		in   *api.Storage
		want mountSpec
	}{
		{
			&api.Storage{Driver: api.StorageDriver_STORAGE_DRIVER_9P, Source: "kasa", MountPoint: "/run/kasa/shared", Options: []string{"version=9p2000.L", "msize=8192"}},
			mountSpec{source: "kasa", target: "/run/kasa/shared", fstype: "9p", data: "version=9p2000.L,msize=8192,trans=virtio"},
		},
		{
			&api.Storage{Driver: api.StorageDriver_STORAGE_DRIVER_VIRTIOFS, Source: "kasa", MountPoint: "/run/kasa/shared", Options: []string{"ro"}},
			mountSpec{source: "kasa", target: "/run/kasa/shared", fstype: "virtiofs", flags: unix.MS_RDONLY},
		},
		{
			&api.Storage{Driver: api.StorageDriver_STORAGE_DRIVER_BIND, Source: "/run/kasa/shared/c1", MountPoint: "/run/kasa/c1/rootfs", Fstype: "ignored"},
			mountSpec{source: "/run/kasa/shared/c1", target: "/run/kasa/c1/rootfs", flags: unix.MS_BIND | unix.MS_REC},
		},
		{
			&api.Storage{Driver: api.StorageDriver_STORAGE_DRIVER_LOCAL, MountPoint: "/run/kasa/empty", Options: []string{"mode=0750"}},
			mountSpec{target: "/run/kasa/empty", local: true, mode: 0o750, data: "mode=0750"},
		},
		{
			&api.Storage{Driver: api.StorageDriver_STORAGE_DRIVER_OVERLAY, MountPoint: "/run/kasa/c1/rootfs", Options: []string{"lowerdir=/a:/b", "upperdir=/u", "workdir=/w"}},
			mountSpec{source: "overlay", target: "/run/kasa/c1/rootfs", fstype: "overlay", data: "lowerdir=/a:/b,upperdir=/u,workdir=/w"},
		},
	}
	for _, tc := range ok {
		got, err := resolveStorage(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("%v:\n got  %+v (%v)\n want %+v", tc.in, got, err, tc.want)
		}
	}
	bad := []*api.Storage{
		{Driver: api.StorageDriver_STORAGE_DRIVER_UNSPECIFIED, MountPoint: "/x"},
		{Driver: api.StorageDriver_STORAGE_DRIVER_9P, MountPoint: "/x"},
		{Driver: api.StorageDriver_STORAGE_DRIVER_9P, Source: "t", MountPoint: "relative"},
		{Driver: api.StorageDriver_STORAGE_DRIVER_9P, Source: "t", MountPoint: "/a/../b"},
		{Driver: api.StorageDriver_STORAGE_DRIVER_BIND, Source: "rel", MountPoint: "/x"},
		{Driver: api.StorageDriver_STORAGE_DRIVER_LOCAL, MountPoint: "/x", Options: []string{"mode=rwx"}},
		{Driver: api.StorageDriver_STORAGE_DRIVER_OVERLAY, MountPoint: "/x"},
		{Driver: api.StorageDriver_STORAGE_DRIVER_BIND, Source: "/a", MountPoint: "/"},
	}
	for _, s := range bad {
		if _, err := resolveStorage(s); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%v: %v, want InvalidArgument", s, err)
		}
	}
}

// LOCAL storages need no privilege: they exercise ordering, reference
// counting and rollback.
func TestMountsRefcountAndRollback(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	ms := NewMounts()
	local := func(name string, opts ...string) *api.Storage {
		return &api.Storage{Driver: api.StorageDriver_STORAGE_DRIVER_LOCAL, MountPoint: filepath.Join(dir, name), Options: opts}
	}
	exists := func(name string) bool { _, err := os.Stat(filepath.Join(dir, name)); return err == nil }

	rel1, err := ms.Mount(ctx, []*api.Storage{local("a", "mode=0700"), local("shared")})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "a")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("a: %v %v", fi, err)
	}
	rel2, err := ms.Mount(ctx, []*api.Storage{local("shared"), local("b")})
	if err != nil {
		t.Fatal(err)
	}
	// The same mount point with other parameters is refused, and what the
	// failed call had already set up is undone.
	if _, err := ms.Mount(ctx, []*api.Storage{local("c"), local("a", "mode=0777")}); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("conflicting storage: %v, want AlreadyExists", err)
	}
	if exists("c") {
		t.Error("c left behind by a failed Mount")
	}
	if err := rel1(); err != nil {
		t.Fatal(err)
	}
	if exists("a") || !exists("shared") || !exists("b") {
		t.Errorf("after the first owner left: a %v shared %v b %v", exists("a"), exists("shared"), exists("b"))
	}
	if err := rel2(); err != nil || exists("shared") || exists("b") {
		t.Errorf("after the last owner left: shared %v b %v (%v)", exists("shared"), exists("b"), err)
	}
	if err := rel2(); err != nil {
		t.Errorf("second release: %v", err)
	}

	if _, err := ms.Mount(ctx, []*api.Storage{local("x"), local("x/y")}); err != nil {
		t.Fatal(err)
	}
	if err := ms.ReleaseAll(ctx); err != nil || exists("x") {
		t.Errorf("ReleaseAll: x %v, %v", exists("x"), err)
	}
}

package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/agent/api"
)

// mountFlags are the mount(8) -o options that are flags, not data.
var mountFlags = map[string]struct {
	clear bool
	flag  uintptr
}{
	"ro": {false, unix.MS_RDONLY}, "rw": {true, unix.MS_RDONLY},
	"nosuid": {false, unix.MS_NOSUID}, "suid": {true, unix.MS_NOSUID},
	"nodev": {false, unix.MS_NODEV}, "dev": {true, unix.MS_NODEV},
	"noexec": {false, unix.MS_NOEXEC}, "exec": {true, unix.MS_NOEXEC},
	"sync": {false, unix.MS_SYNCHRONOUS}, "async": {true, unix.MS_SYNCHRONOUS},
	"dirsync": {false, unix.MS_DIRSYNC}, "mand": {false, unix.MS_MANDLOCK}, "nomand": {true, unix.MS_MANDLOCK},
	"atime": {true, unix.MS_NOATIME}, "noatime": {false, unix.MS_NOATIME},
	"diratime": {true, unix.MS_NODIRATIME}, "nodiratime": {false, unix.MS_NODIRATIME},
	"relatime": {false, unix.MS_RELATIME}, "norelatime": {true, unix.MS_RELATIME},
	"strictatime": {false, unix.MS_STRICTATIME}, "nostrictatime": {true, unix.MS_STRICTATIME},
	"bind": {false, unix.MS_BIND}, "rbind": {false, unix.MS_BIND | unix.MS_REC},
	"defaults": {false, 0},
}

// propagationFlags are applied by a separate mount(2) after the mount.
var propagationFlags = map[string]uintptr{
	"private": unix.MS_PRIVATE, "rprivate": unix.MS_PRIVATE | unix.MS_REC,
	"shared": unix.MS_SHARED, "rshared": unix.MS_SHARED | unix.MS_REC,
	"slave": unix.MS_SLAVE, "rslave": unix.MS_SLAVE | unix.MS_REC,
	"unbindable": unix.MS_UNBINDABLE, "runbindable": unix.MS_UNBINDABLE | unix.MS_REC,
}

// parseMountOptions splits mount(8) options into flags, propagation flags
// and the data string passed to the filesystem.
func parseMountOptions(options []string) (flags, propagation uintptr, data string) {
	var rest []string
	for _, o := range options {
		if f, ok := mountFlags[o]; ok {
			if f.clear {
				flags &^= f.flag
			} else {
				flags |= f.flag
			}
			continue
		}
		if p, ok := propagationFlags[o]; ok {
			propagation |= p
			continue
		}
		if o != "" {
			rest = append(rest, o)
		}
	}
	return flags, propagation, strings.Join(rest, ",")
}

// mountSpec is one storage, resolved into what mount(2) needs.
type mountSpec struct {
	source, target, fstype string
	flags, propagation     uintptr
	data                   string
	local                  bool // STORAGE_DRIVER_LOCAL: a directory, no mount
	mode                   os.FileMode
}

// resolveStorage validates a storage and resolves its driver. Errors wrap
// errdefs.ErrInvalidArgument.
func resolveStorage(s *api.Storage) (mountSpec, error) {
	bad := func(format string, args ...any) (mountSpec, error) {
		return mountSpec{}, fmt.Errorf("storage %s: %s: %w", s.GetMountPoint(), fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
	}
	mp := s.GetMountPoint()
	if !filepath.IsAbs(mp) || filepath.Clean(mp) != mp || mp == "/" {
		return bad("mount_point must be an absolute, clean guest path other than /")
	}
	flags, prop, data := parseMountOptions(s.GetOptions())
	m := mountSpec{source: s.GetSource(), target: mp, fstype: s.GetFstype(), flags: flags, propagation: prop, data: data}
	switch s.GetDriver() {
	case api.StorageDriver_STORAGE_DRIVER_9P:
		if m.source == "" {
			return bad("9p storage needs its mount tag as source")
		}
		m.fstype = "9p"
		if !slices.ContainsFunc(s.GetOptions(), func(o string) bool { return strings.HasPrefix(o, "trans=") }) {
			m.data = joinData(m.data, "trans=virtio")
		}
	case api.StorageDriver_STORAGE_DRIVER_VIRTIOFS:
		if m.source == "" {
			return bad("virtio-fs storage needs its mount tag as source")
		}
		m.fstype = "virtiofs"
	case api.StorageDriver_STORAGE_DRIVER_BIND:
		if !filepath.IsAbs(m.source) {
			return bad("bind storage needs an absolute guest path as source, not %q", m.source)
		}
		if m.flags&unix.MS_BIND == 0 {
			m.flags |= unix.MS_BIND | unix.MS_REC
		}
		m.fstype = ""
	case api.StorageDriver_STORAGE_DRIVER_LOCAL:
		m.local, m.mode = true, 0o777
		for _, o := range s.GetOptions() {
			if v, ok := strings.CutPrefix(o, "mode="); ok {
				mode, err := strconv.ParseUint(v, 8, 32)
				if err != nil || mode > 0o7777 {
					return bad("option %q: want an octal mode", o)
				}
				m.mode = os.FileMode(mode)
			}
		}
	case api.StorageDriver_STORAGE_DRIVER_OVERLAY:
		if !strings.Contains(m.data, "lowerdir=") {
			return bad("overlay storage needs a lowerdir= option")
		}
		m.fstype, m.source = "overlay", "overlay"
	default:
		return bad("driver %v is not one of 9P, VIRTIOFS, BIND, LOCAL, OVERLAY", s.GetDriver())
	}
	return m, nil
}

func joinData(a, b string) string {
	if a == "" {
		return b
	}
	return a + "," + b
}

// mounted is a storage in use, shared by every owner that asked for the
// same mount point with the same parameters.
type mounted struct {
	spec mountSpec
	refs int
}

// Mounts are the storages the agent mounted, reference-counted by mount
// point, so that a volume several containers share is mounted once and
// unmounted when the last of them goes.
type Mounts struct {
	mu     sync.Mutex
	points map[string]*mounted
}

// NewMounts returns an empty set.
func NewMounts() *Mounts { return &Mounts{points: map[string]*mounted{}} }

// Mount mounts storages in order. On error, those already mounted are
// unmounted again. release drops this owner's references, last first.
func (ms *Mounts) Mount(ctx context.Context, storages []*api.Storage) (release func() error, err error) {
	specs := make([]mountSpec, 0, len(storages))
	for _, s := range storages {
		m, err := resolveStorage(s)
		if err != nil {
			return nil, err
		}
		specs = append(specs, m)
	}
	var done []string
	release = func() error {
		var errs []error
		for i := len(done) - 1; i >= 0; i-- {
			if err := ms.unref(ctx, done[i]); err != nil {
				errs = append(errs, err)
			}
		}
		done = nil
		return errors.Join(errs...)
	}
	for _, m := range specs {
		if err := ms.ref(ctx, m); err != nil {
			if rerr := release(); rerr != nil {
				log.G(ctx).WithError(rerr).Warn("unmounting after a failed mount")
			}
			return nil, err
		}
		done = append(done, m.target)
	}
	return release, nil
}

func (ms *Mounts) ref(ctx context.Context, m mountSpec) error {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if cur, ok := ms.points[m.target]; ok {
		if cur.spec != m {
			return fmt.Errorf("storage %s: already mounted with other parameters (%s from %q): %w", m.target, cur.spec.fstype, cur.spec.source, errdefs.ErrAlreadyExists)
		}
		cur.refs++
		return nil
	}
	if err := doMount(m); err != nil {
		return err
	}
	log.G(ctx).WithField("mount_point", m.target).WithField("fstype", m.fstype).Debug("storage mounted")
	ms.points[m.target] = &mounted{spec: m, refs: 1}
	return nil
}

func (ms *Mounts) unref(ctx context.Context, target string) error {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	cur, ok := ms.points[target]
	if !ok {
		return nil
	}
	if cur.refs--; cur.refs > 0 {
		return nil
	}
	delete(ms.points, target)
	if err := doUnmount(cur.spec); err != nil {
		return err
	}
	log.G(ctx).WithField("mount_point", target).Debug("storage unmounted")
	return nil
}

func doMount(m mountSpec) error {
	if m.local {
		if err := os.MkdirAll(m.target, m.mode.Perm()); err != nil {
			return fmt.Errorf("storage %s: %w", m.target, err)
		}
		if err := os.Chmod(m.target, m.mode); err != nil {
			return fmt.Errorf("storage %s: %w", m.target, err)
		}
		return nil
	}
	if err := makeTarget(m); err != nil {
		return fmt.Errorf("storage %s: create mount point: %w", m.target, err)
	}
	// A bind mount ignores MS_RDONLY and friends until it is remounted.
	flags := m.flags
	if flags&unix.MS_BIND != 0 {
		flags &= unix.MS_BIND | unix.MS_REC
	}
	if err := unix.Mount(m.source, m.target, m.fstype, flags, m.data); err != nil {
		return fmt.Errorf("storage %s: mount %s %q: %w", m.target, m.fstype, m.source, err)
	}
	if m.flags&unix.MS_BIND != 0 && m.flags&^(unix.MS_BIND|unix.MS_REC) != 0 {
		if err := unix.Mount("", m.target, "", unix.MS_REMOUNT|m.flags&^unix.MS_REC, ""); err != nil {
			unix.Unmount(m.target, unix.MNT_DETACH)
			return fmt.Errorf("storage %s: remount with options: %w", m.target, err)
		}
	}
	if m.propagation != 0 {
		if err := unix.Mount("", m.target, "", m.propagation, ""); err != nil {
			unix.Unmount(m.target, unix.MNT_DETACH)
			return fmt.Errorf("storage %s: set propagation: %w", m.target, err)
		}
	}
	return nil
}

// makeTarget creates the mount point: a file for a bind mount of a file,
// else a directory.
func makeTarget(m mountSpec) error {
	if m.flags&unix.MS_BIND != 0 {
		if fi, err := os.Stat(m.source); err == nil && !fi.IsDir() {
			if err := os.MkdirAll(filepath.Dir(m.target), 0o755); err != nil {
				return err
			}
			f, err := os.OpenFile(m.target, os.O_CREATE|os.O_WRONLY, 0o644)
			if err != nil {
				return err
			}
			return f.Close()
		}
	}
	return os.MkdirAll(m.target, 0o755)
}

func doUnmount(m mountSpec) error {
	if m.local {
		if err := os.RemoveAll(m.target); err != nil {
			return fmt.Errorf("storage %s: remove: %w", m.target, err)
		}
		return nil
	}
	err := unix.Unmount(m.target, 0)
	if errors.Is(err, unix.EBUSY) {
		// Something still has it open (a process that outlived its
		// container): detach it, the kernel frees it when unused.
		err = unix.Unmount(m.target, unix.MNT_DETACH)
	}
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("storage %s: unmount: %w", m.target, err)
	}
	return nil
}

// ReleaseAll unmounts everything, whoever holds it, last mounted first
// (DestroySandbox).
func (ms *Mounts) ReleaseAll(ctx context.Context) error {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	targets := make([]string, 0, len(ms.points))
	for t := range ms.points {
		targets = append(targets, t)
	}
	// Deeper mount points first, so nested mounts come off before their parents.
	slices.SortFunc(targets, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	var errs []error
	for _, t := range targets {
		if err := doUnmount(ms.points[t].spec); err != nil {
			errs = append(errs, err)
		}
		delete(ms.points, t)
	}
	return errors.Join(errs...)
}

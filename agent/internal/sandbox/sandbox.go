// Package sandbox prepares the guest for the pod: hostname, DNS, kernel
// modules, the storages the agent mounts for the sandbox and its
// containers, and the files the host copies in.
package sandbox

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/agent/api"
)

// Sandbox is the pod-wide state of the guest.
type Sandbox struct {
	// Mounts holds every storage the agent mounted, the sandbox's and the
	// containers'.
	Mounts *Mounts
	// EtcDir is where resolv.conf and hosts are written; ModulesDir is
	// /lib/modules.
	EtcDir, ModulesDir string
	// ShmDir gets the pod's /dev/shm tmpfs (api.GuestPodShm); "" for none.
	ShmDir string

	mu      sync.Mutex
	id      string
	release func() error
}

// New returns the guest's sandbox, not yet created.
func New() *Sandbox {
	return &Sandbox{Mounts: NewMounts(), EtcDir: "/etc", ModulesDir: "/lib/modules", ShmDir: api.GuestPodShm}
}

// ID is the sandbox id CreateSandbox gave; empty before.
func (s *Sandbox) ID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.id
}

// Create applies CreateSandbox: kernel modules, hostname, DNS, storages.
// On error the guest is left as it was, except for loaded modules.
func (s *Sandbox) Create(ctx context.Context, req *api.CreateSandboxRequest) error {
	if req.GetSandboxId() == "" {
		return fmt.Errorf("sandbox_id is required: %w", errdefs.ErrInvalidArgument)
	}
	if h := req.GetHostname(); len(h) > 64 || strings.ContainsAny(h, " \t\n/") {
		return fmt.Errorf("hostname %q: want at most 64 characters, no spaces or slashes: %w", h, errdefs.ErrInvalidArgument)
	}
	for _, line := range req.GetDns() {
		if strings.ContainsAny(line, "\n\x00") {
			return fmt.Errorf("dns line %q: must be a single line: %w", line, errdefs.ErrInvalidArgument)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.id != "" {
		return fmt.Errorf("sandbox %s already created: %w", s.id, errdefs.ErrAlreadyExists)
	}
	for _, m := range req.GetKernelModules() {
		if err := loadModule(s.ModulesDir, m.GetName(), strings.Join(m.GetParameters(), " ")); err != nil {
			return err
		}
		log.G(ctx).WithField("module", m.GetName()).Info("kernel module loaded")
	}
	if h := req.GetHostname(); h != "" {
		if err := unix.Sethostname([]byte(h)); err != nil {
			return fmt.Errorf("set hostname %q: %w", h, err)
		}
	}
	if err := s.writeEtc(req.GetHostname(), req.GetDns()); err != nil {
		return err
	}
	if err := s.mountShm(); err != nil {
		return err
	}
	release, err := s.Mounts.Mount(ctx, req.GetStorages())
	if err != nil {
		s.unmountShm()
		return fmt.Errorf("sandbox storages: %w", err)
	}
	s.id, s.release = req.GetSandboxId(), release
	return nil
}

// mountShm mounts the pod's /dev/shm, a tmpfs the containers' /dev/shm
// bind mounts name.
func (s *Sandbox) mountShm() error {
	if s.ShmDir == "" {
		return nil
	}
	if err := os.MkdirAll(s.ShmDir, 0o755); err != nil {
		return fmt.Errorf("pod shm: %w", err)
	}
	data := "mode=1777,size=" + strconv.Itoa(api.GuestPodShmSize)
	if err := unix.Mount("shm", s.ShmDir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, data); err != nil {
		return fmt.Errorf("pod shm: mount tmpfs on %s: %w", s.ShmDir, err)
	}
	return nil
}

func (s *Sandbox) unmountShm() error {
	if s.ShmDir == "" {
		return nil
	}
	if err := unix.Unmount(s.ShmDir, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
		return fmt.Errorf("pod shm: unmount %s: %w", s.ShmDir, err)
	}
	return nil
}

// writeEtc writes the guest's /etc/resolv.conf and /etc/hosts.
func (s *Sandbox) writeEtc(hostname string, dns []string) error {
	if err := os.MkdirAll(s.EtcDir, 0o755); err != nil {
		return err
	}
	if len(dns) > 0 {
		if err := writeFileAtomic(filepath.Join(s.EtcDir, "resolv.conf"), []byte(strings.Join(dns, "\n")+"\n"), 0o644); err != nil {
			return fmt.Errorf("write resolv.conf: %w", err)
		}
	}
	hosts := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
	if hostname != "" {
		hosts += "127.0.1.1\t" + hostname + "\n"
	}
	if err := writeFileAtomic(filepath.Join(s.EtcDir, "hosts"), []byte(hosts), 0o644); err != nil {
		return fmt.Errorf("write hosts: %w", err)
	}
	return nil
}

// Destroy unmounts every storage, the containers' included (they must be
// gone already).
func (s *Sandbox) Destroy(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.release = nil
	return errors.Join(s.Mounts.ReleaseAll(ctx), s.unmountShm())
}

func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".kasa-tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return err
	}
	if err := os.Chmod(tmp, perm); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// loadModule loads a module by its modprobe name, after the modules it
// depends on, from modulesDir/<release>/modules.dep.
func loadModule(modulesDir, name, params string) error {
	if name == "" || strings.ContainsAny(name, "/ ") {
		return fmt.Errorf("kernel module %q: want a module name: %w", name, errdefs.ErrInvalidArgument)
	}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return err
	}
	dir := filepath.Join(modulesDir, unix.ByteSliceToString(uts.Release[:]))
	deps, err := readModulesDep(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return fmt.Errorf("kernel module %s: %w", name, err)
	}
	want := strings.ReplaceAll(name, "-", "_")
	for path, needs := range deps {
		if moduleName(path) != want {
			continue
		}
		for i := len(needs) - 1; i >= 0; i-- {
			if err := finitModule(filepath.Join(dir, needs[i]), ""); err != nil {
				return fmt.Errorf("kernel module %s: dependency: %w", name, err)
			}
		}
		return finitModule(filepath.Join(dir, path), params)
	}
	if builtin, _ := os.ReadFile(filepath.Join(dir, "modules.builtin")); moduleListed(string(builtin), want) {
		return nil
	}
	return fmt.Errorf("kernel module %s: not in the guest's %s: %w", name, dir, errdefs.ErrNotFound)
}

func readModulesDep(path string) (map[string][]string, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		mod, deps, ok := strings.Cut(sc.Text(), ":")
		if ok {
			out[mod] = strings.Fields(deps)
		}
	}
	return out, sc.Err()
}

func moduleName(path string) string {
	base := filepath.Base(path)
	base, _, _ = strings.Cut(base, ".ko")
	return strings.ReplaceAll(base, "-", "_")
}

func moduleListed(list, want string) bool {
	for _, line := range strings.Split(list, "\n") {
		if line != "" && moduleName(line) == want {
			return true
		}
	}
	return false
}

func finitModule(path, params string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var flags int
	if !strings.HasSuffix(path, ".ko") {
		flags = unix.MODULE_INIT_COMPRESSED_FILE // .ko.xz, .ko.zst: the kernel decompresses
	}
	if err := unix.FinitModule(int(f.Fd()), params, flags); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("load %s: %w", path, err)
	}
	return nil
}

package ctrtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// KasaRunDir is Kasa's state root (docs/architecture.md, "Contracts"): sbs/, vm/ and shared/, one
// directory per sandbox id in each.
var KasaRunDir = "/run/kasa"

// KasaVirtiofsdDir holds the way an unprivileged virtiofsd reaches its
// sandbox's share (fsshare.DoorRoot): one directory per sandbox id.
var KasaVirtiofsdDir = "/run/kasa-virtiofsd"

// AssertNoLeftovers fails the test unless, within 10s (shims exit after
// containerd returns), nothing of the given sandbox/container ids is left:
// see FindLeftovers. c may be nil when no containerd is involved.
func AssertNoLeftovers(tb testing.TB, c *Containerd, ids ...string) {
	tb.Helper()
	if left := WaitNoLeftovers(context.Background(), 10*time.Second, c, ids...); len(left) > 0 {
		tb.Errorf("left behind after %v:\n  %s", ids, strings.Join(left, "\n  "))
	}
}

// WaitNoLeftovers polls FindLeftovers until it finds nothing or timeout
// passes, and returns the last findings.
func WaitNoLeftovers(ctx context.Context, timeout time.Duration, c *Containerd, ids ...string) []string {
	deadline := time.Now().Add(timeout)
	for {
		left := FindLeftovers(ctx, c, ids...)
		if len(left) == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			return left
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// FindLeftovers describes, one line each, what should be gone once the
// containers and sandboxes ids have been removed. Other tests and other
// harness instances may share the host, so only what belongs to c or ids
// counts:
//   - a QEMU process whose command line names sandbox-<id>;
//   - a shim serving c, or started for one of ids; with neither c nor ids,
//     any containerd-shim-kasa-v2;
//   - a mount under c.Dir, or under KasaRunDir with an id as a path element
//     (any mount there when ids is empty);
//   - KasaRunDir/{sbs,vm,shared}/<id>;
//   - the cgroup /<namespace>/<id> ctr creates, runc state under c.RuncRoot,
//     and tasks or containers still in c's namespace.
func FindLeftovers(ctx context.Context, c *Containerd, ids ...string) []string {
	var left []string
	for _, p := range processes() {
		base := filepath.Base(p.argv[0])
		switch {
		case strings.HasPrefix(base, "qemu"):
			for _, id := range ids {
				if namesSandbox(p.argv, id) {
					left = append(left, fmt.Sprintf("qemu process %d for sandbox %s: %s", p.pid, id, p.cmdline()))
				}
			}
		case isShim(p.argv) && servesOurs(p.argv, c, ids):
			left = append(left, fmt.Sprintf("shim process %d: %s", p.pid, p.cmdline()))
		}
	}
	mounts, err := mountPoints()
	if err != nil {
		left = append(left, "cannot read mounts: "+err.Error())
	}
	for _, m := range mounts {
		if (within(m, KasaRunDir) || within(m, KasaVirtiofsdDir)) && (len(ids) == 0 || namesID(m, ids)) || c != nil && within(m, c.Dir) {
			left = append(left, "mount "+m)
		}
	}
	for _, id := range ids {
		for _, d := range []string{filepath.Join(KasaRunDir, "sbs", id), filepath.Join(KasaRunDir, "vm", id),
			filepath.Join(KasaRunDir, "shared", id), filepath.Join(KasaVirtiofsdDir, id)} {
			if exists(d) {
				left = append(left, "directory "+d)
			}
		}
		// fsshare's idmap staging, named after the sandbox id's first 16
		// characters, and vmmuser's record of virtiofsd's id range.
		staged, _ := filepath.Glob(filepath.Join(KasaRunDir, "idmap", id[:min(16, len(id))]+"-*"))
		for _, d := range staged {
			left = append(left, "idmap staging "+d)
		}
		ranges, _ := filepath.Glob(filepath.Join(KasaRunDir, "vmm-idrange", "*"))
		for _, r := range ranges {
			if b, err := os.ReadFile(r); err == nil && string(b) == id {
				left = append(left, "virtiofsd id range "+r)
			}
		}
	}
	if c == nil {
		return left
	}
	for _, id := range ids {
		cgroups, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", c.Namespace, id))
		if d := filepath.Join("/sys/fs/cgroup", c.Namespace, id); isDir(d) {
			cgroups = append(cgroups, d)
		}
		for _, d := range cgroups {
			left = append(left, "cgroup "+d)
		}
	}
	// The runc shim runs runc with --root RuncRoot/<namespace>.
	runcRoot := filepath.Join(c.RuncRoot, c.Namespace)
	if states, err := os.ReadDir(runcRoot); err == nil {
		for _, s := range states {
			left = append(left, "runc state "+filepath.Join(runcRoot, s.Name()))
		}
	}
	if !c.hasExited() {
		for _, kind := range []string{"tasks", "containers"} {
			res, err := c.Run(ctx, kind, "ls", "-q")
			if err != nil || res.ExitCode != 0 {
				left = append(left, fmt.Sprintf("cannot list %s: %v %s", kind, err, strings.TrimSpace(res.Stderr)))
				continue
			}
			for _, id := range strings.Fields(res.Stdout) {
				left = append(left, fmt.Sprintf("%s %s in namespace %s", strings.TrimSuffix(kind, "s"), id, c.Namespace))
			}
		}
	}
	return left
}

type process struct {
	pid  int
	argv []string
}

func (p process) cmdline() string { return strings.Join(p.argv, " ") }

// processes lists the host's processes that have a command line.
func processes() []process {
	var out []process
	paths, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, path := range paths {
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(path)))
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(path)
		if err != nil || len(b) == 0 {
			continue
		}
		out = append(out, process{pid: pid, argv: strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")})
	}
	return out
}

// servesOurs reports whether a shim's arguments tie it to c or ids.
func servesOurs(argv []string, c *Containerd, ids []string) bool {
	if c == nil && len(ids) == 0 {
		return filepath.Base(argv[0]) == ShimKasa
	}
	return c != nil && argValue(argv, "-address") == c.Address || slices.Contains(ids, argValue(argv, "-id"))
}

// namesID reports whether an element of path p is one of ids.
func namesID(p string, ids []string) bool {
	for _, el := range strings.Split(p, "/") {
		if slices.Contains(ids, el) {
			return true
		}
	}
	return false
}

func isShim(argv []string) bool {
	return strings.HasPrefix(filepath.Base(argv[0]), "containerd-shim")
}

// argValue returns the value of a Go-style flag (-name v or -name=v).
func argValue(argv []string, name string) string {
	for i, a := range argv {
		if a == name || a == "-"+name {
			if i+1 < len(argv) {
				return argv[i+1]
			}
		}
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
		if v, ok := strings.CutPrefix(a, "-"+name+"="); ok {
			return v
		}
	}
	return ""
}

// namesSandbox reports whether an argument names sandbox-<id> as a whole
// word (so "x1" does not match "sandbox-x10"), e.g. QEMU's -name.
func namesSandbox(argv []string, id string) bool {
	want := "sandbox-" + id
	for _, a := range argv[1:] {
		for rest := a; ; {
			i := strings.Index(rest, want)
			if i < 0 {
				break
			}
			after := rest[i+len(want):]
			if after == "" || !isIDChar(after[0]) {
				return true
			}
			rest = after
		}
	}
	return false
}

func isIDChar(b byte) bool {
	return b == '-' || b == '_' || b == '.' || b >= '0' && b <= '9' || b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z'
}

// mountPoints lists the mount points of this process's mount namespace.
func mountPoints() ([]string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	return parseMountInfo(string(b)), nil
}

// parseMountInfo returns field 5 (the mount point) of each mountinfo line,
// with the kernel's octal escapes (\040 for a space) undone.
func parseMountInfo(s string) []string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		out = append(out, unescapeOctal(f[4]))
	}
	return out
}

func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

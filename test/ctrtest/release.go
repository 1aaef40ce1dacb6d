package ctrtest

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
)

// Release is a containerd binary's version, as `containerd --version`
// prints it: Debian's 1.6 says "containerd github.com/containerd/containerd
// 1.6.20~ds1 1.6.20~ds1-1+deb12u3", a 2.x build "containerd
// github.com/containerd/containerd/v2 v2.4.2 <revision>".
type Release struct {
	Text         string // the version field, e.g. "1.6.20~ds1" or "v2.4.2"
	Major, Minor int
}

// String is "major.minor", e.g. "1.6" or "2.4".
func (r Release) String() string { return fmt.Sprintf("%d.%d", r.Major, r.Minor) }

// V2 reports whether this is containerd 2.x or later, whose config.toml is
// version 3 and whose CRI plugin is split in three (see renderCRI).
func (r Release) V2() bool { return r.Major >= 2 }

// BinaryRelease runs `containerd --version` of the binary at path.
func BinaryRelease(path string) (Release, error) {
	out, err := exec.Command(path, "--version").Output()
	if err != nil {
		return Release{}, fmt.Errorf("%s --version: %w", path, err)
	}
	return ParseRelease(string(out))
}

// ParseRelease parses the output of `containerd --version`.
func ParseRelease(out string) (Release, error) {
	f := strings.Fields(out)
	if len(f) < 3 || f[0] != "containerd" {
		return Release{}, fmt.Errorf("not a containerd version: %q", strings.TrimSpace(out))
	}
	r := Release{Text: f[2]}
	parts := strings.SplitN(strings.TrimPrefix(f[2], "v"), ".", 3)
	if len(parts) < 2 {
		return Release{}, fmt.Errorf("containerd version %q: no major.minor", f[2])
	}
	var err error
	if r.Major, err = strconv.Atoi(parts[0]); err != nil {
		return Release{}, fmt.Errorf("containerd version %q: %w", f[2], err)
	}
	minor := parts[1]
	if i := strings.IndexFunc(minor, func(c rune) bool { return c < '0' || c > '9' }); i >= 0 {
		minor = minor[:i]
	}
	if r.Minor, err = strconv.Atoi(minor); err != nil {
		return Release{}, fmt.Errorf("containerd version %q: %w", f[2], err)
	}
	return r, nil
}

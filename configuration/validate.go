package configuration

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// Limits of the numeric keys.
const (
	minVCPUs              = 1
	minMemoryMiB          = 128
	maxMemoryMiB          = 4 << 20 // 4 TiB
	minMSize9P            = 4096
	maxMSize9P            = 1 << 20
	minDialTimeoutSeconds = 1
	maxDialTimeoutSeconds = 600
	// maxConcurrentBoots bounds runtime.max_concurrent_boots.
	maxConcurrentBoots = 1024
)

// FieldError is one bad configuration value. errors.As finds it in the
// joined errors Validate and Load return.
type FieldError struct {
	// File is the configuration file ("" for the embedded defaults).
	File string
	// Annotation is the pod annotation the value came from, if any.
	Annotation string
	// Key is the dotted TOML key, e.g. hypervisor.qemu.machine_type.
	Key string
	// Value is the offending value; nil when the problem is not one value.
	Value any
	// Reason says what is allowed.
	Reason string
	// Err is the underlying cause, if any (a regexp or stat error).
	Err error
}

func (e *FieldError) Error() string {
	var b strings.Builder
	if e.Annotation != "" {
		b.WriteString("pod annotation " + e.Annotation)
	} else {
		b.WriteString(fileLabel(e.File))
	}
	if e.Key != "" {
		b.WriteString(": " + e.Key)
	}
	if e.Value != nil {
		b.WriteString(" = " + formatValue(e.Value))
	}
	b.WriteString(": " + e.Reason)
	if e.Err != nil {
		b.WriteString(": " + e.Err.Error())
	}
	return b.String()
}

func (e *FieldError) Unwrap() error { return e.Err }

// validator collects every problem rather than stopping at the first.
type validator struct {
	cfg  *Config
	errs []error
}

// fail records a bad value, naming the file that set it.
func (v *validator) fail(key string, value any, reason string, err error) {
	v.errs = append(v.errs, &FieldError{File: v.cfg.originOf(key), Key: key, Value: value, Reason: reason, Err: err})
}

func (v *validator) intRange(key string, value, lo, hi int) {
	if value < lo || value > hi {
		v.fail(key, value, fmt.Sprintf("allowed range is %d..%d", lo, hi), nil)
	}
}

func oneOf[T ~string](v *validator, key string, value T, allowed []T) {
	if !isOneOf(value, allowed) {
		v.fail(key, value, "allowed values are "+joinValues(allowed), nil)
	}
}

func (v *validator) absPath(key, value string, required bool) {
	switch {
	case value == "" && required:
		v.fail(key, value, "an absolute path is required", nil)
	case value != "" && !filepath.IsAbs(value):
		v.fail(key, value, "must be an absolute path", nil)
	}
}

func (v *validator) globs(key string, patterns []string) {
	for i, p := range patterns {
		if _, err := filepath.Match(p, ""); err != nil {
			v.fail(fmt.Sprintf("%s[%d]", key, i), p, "invalid glob pattern", err)
		}
	}
}

var moduleName = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// Validate checks every value and returns all problems joined; each names
// the file, the key and what is allowed. It does not look at the host: see
// CheckPaths.
func (c *Config) Validate() error {
	v := &validator{cfg: c}
	name := c.HypervisorName
	if !isOneOf(name, hypervisorNames) {
		v.fail("hypervisor."+string(name), nil, unsupportedHypervisor(name), nil)
		return errors.Join(v.errs...)
	}
	c.validateHypervisor(v)

	a := &c.Agent
	if a.DialTimeout < minDialTimeoutSeconds*time.Second || a.DialTimeout > maxDialTimeoutSeconds*time.Second {
		var shown any = int64(a.DialTimeout / time.Second)
		if a.DialTimeout%time.Second != 0 {
			shown = a.DialTimeout.String() // set in Go, not from a file
		}
		v.fail("agent.kata.dial_timeout", shown,
			fmt.Sprintf("allowed range is %d..%d (seconds)", minDialTimeoutSeconds, maxDialTimeoutSeconds), nil)
	}
	for i, m := range a.KernelModules {
		if fields := strings.Fields(m); len(fields) == 0 || !moduleName.MatchString(fields[0]) {
			v.fail(fmt.Sprintf("agent.kata.kernel_modules[%d]", i), m,
				`want "module_name param=value ...", with a name of letters, digits, "_" and "-"`, nil)
		}
	}
	oneOf(v, "agent.kata.transport", a.Transport, qemuTransports)
	if a.DebugConsoleEnabled && a.Transport == TransportVirtioSerial {
		v.fail("agent.kata.debug_console_enabled", true, fmt.Sprintf(
			"the debug console (kasa exec) is a vsock port: agent.kata.transport %q has none; use %q", a.Transport, TransportAuto), nil)
	}
	if name == HypervisorQEMU && c.Hypervisor.Rootless && a.Transport == TransportVirtioSerial {
		v.fail("agent.kata.transport", a.Transport, fmt.Sprintf(
			"hypervisor.qemu.rootless = true: QEMU would create the virtio-serial socket in a directory it cannot write; use %q, or set rootless = false", TransportAuto), nil)
	}

	if f := &c.Factory; f.EnableTemplate && !filepath.IsAbs(f.TemplatePath) {
		v.fail("factory.template_path", f.TemplatePath, "must be an absolute path", nil)
	}

	r := &c.Runtime
	oneOf(v, "runtime.internetworking_model", r.InterNetworkingModel, interNetworkingModels)
	if r.DisableNewNetns && r.InterNetworkingModel != NetNone {
		v.fail("runtime.disable_new_netns", true, `requires runtime.internetworking_model = "none"`, nil)
	}
	v.intRange("runtime.max_concurrent_boots", r.MaxConcurrentBoots, 0, maxConcurrentBoots)
	return errors.Join(v.errs...)
}

// unsupportedHypervisor says why a [hypervisor.<name>] table is refused.
func unsupportedHypervisor(name HypervisorName) string {
	if name == HypervisorCLH {
		return "Cloud Hypervisor is not supported yet: Kasa has no driver for it; use [hypervisor.qemu]"
	}
	return "unsupported hypervisor; supported names are " + joinValues(hypervisorNames)
}

func (c *Config) validateHypervisor(v *validator) {
	h := &c.Hypervisor
	prefix := "hypervisor." + string(c.HypervisorName) + "."

	// In the order of the default file, so messages read top to bottom.
	v.absPath(prefix+"path", h.Path, true)
	v.absPath(prefix+"kernel", h.Kernel, true)
	switch {
	case h.Image != "" && h.Initrd != "":
		v.fail(prefix+"image", h.Image, "and initrd are both set: the guest's root is one or the other", nil)
	case h.Image != "":
		v.absPath(prefix+"image", h.Image, true)
		if h.MachineType == MachineMicroVM {
			v.fail(prefix+"image", h.Image, fmt.Sprintf("needs machine_type %q or %q: %q has no ACPI NVDIMM support (use initrd)", MachineQ35, MachinePC, MachineMicroVM), nil)
		}
	default:
		v.absPath(prefix+"initrd", h.Initrd, true)
	}
	oneOf(v, prefix+"machine_type", h.MachineType, machineTypes)
	v.absPath(prefix+"firmware", h.Firmware, false)
	if strings.ContainsFunc(h.KernelParams, func(r rune) bool { return unicode.IsControl(r) && r != '\t' }) {
		v.fail(prefix+"kernel_params", h.KernelParams, "must not contain control characters", nil)
	}
	v.intRange(prefix+"default_vcpus", h.DefaultVCPUs, minVCPUs, maxVCPULimit)
	if h.DefaultMaxVCPUs != 0 && (h.DefaultMaxVCPUs < h.DefaultVCPUs || h.DefaultMaxVCPUs > maxVCPULimit) {
		v.fail(prefix+"default_maxvcpus", h.DefaultMaxVCPUs, fmt.Sprintf(
			"allowed values are 0 (the number of host CPUs) or default_vcpus (%d)..%d", h.DefaultVCPUs, maxVCPULimit), nil)
	}
	v.intRange(prefix+"default_memory", h.DefaultMemory, minMemoryMiB, maxMemoryMiB)
	oneOf(v, prefix+"shared_fs", h.SharedFS, qemuSharedFS)
	v.absPath(prefix+"virtio_fs_daemon", h.VirtioFSDaemon, h.SharedFS == SharedFSVirtioFS)
	v.intRange(prefix+"msize_9p", h.MSize9P, minMSize9P, maxMSize9P)

	for i, expr := range h.EnableAnnotations {
		if _, err := compileAnchored(expr); err != nil {
			v.fail(fmt.Sprintf("%senable_annotations[%d]", prefix, i), expr, "invalid regular expression", err)
		}
	}
	v.globs(prefix+"valid_hypervisor_paths", h.ValidHypervisorPaths)
	v.globs(prefix+"valid_kernel_paths", h.ValidKernelPaths)
	v.globs(prefix+"valid_initrd_paths", h.ValidInitrdPaths)
	v.globs(prefix+"valid_virtio_fs_daemon_paths", h.ValidVirtioFSDaemonPaths)
	oneOf(v, prefix+"accelerator", h.Accelerator, accelerators)
	oneOf(v, prefix+"virtio_fs_userns", h.VirtioFSUserns, virtioFSUsernsModes)
	if strings.ContainsAny(h.SeccompSandbox, " \t\n") {
		v.fail(prefix+"seccompsandbox", h.SeccompSandbox, `QEMU's -sandbox value, e.g. "`+DefaultSeccompSandbox+`", or "" for none`, nil)
	}
	if h.Rootless && h.SharedFS == SharedFS9P {
		v.fail(prefix+"shared_fs", h.SharedFS, fmt.Sprintf(
			"rootless = true: virtio-9p is served by QEMU itself, which would need root to read and write the containers' files; use %q, or set rootless = false", SharedFSVirtioFS), nil)
	}
}

// compileAnchored compiles an enable_annotations entry so that it must match
// the whole key, as Kata does.
func compileAnchored(expr string) (*regexp.Regexp, error) {
	if _, err := regexp.Compile(expr); err != nil {
		return nil, err // report the operator's text, not our wrapping
	}
	return regexp.Compile("^(?:" + expr + ")$")
}

// CheckPaths reports the files the configuration names that are missing or
// unusable on this host: the hypervisor binary, kernel, initrd, firmware and
// virtiofsd. Validate leaves this out so a file can be checked anywhere;
// `kasa check` and sandbox creation call it.
func (c *Config) CheckPaths() []error {
	v := &validator{cfg: c}
	h := &c.Hypervisor
	prefix := "hypervisor." + string(c.HypervisorName) + "."
	checkFile := func(key, path string, executable bool) {
		fi, err := os.Stat(path)
		switch {
		case err != nil:
			v.fail(key, path, "cannot use file", err)
		case fi.IsDir():
			v.fail(key, path, "is a directory, want a file", nil)
		case executable && fi.Mode().Perm()&0o111 == 0:
			v.fail(key, path, "is not executable", nil)
		}
	}
	checkFile(prefix+"path", h.Path, true)
	checkFile(prefix+"kernel", h.Kernel, false)
	if h.Image != "" {
		checkFile(prefix+"image", h.Image, false)
	} else {
		checkFile(prefix+"initrd", h.Initrd, false)
	}
	if h.Firmware != "" {
		checkFile(prefix+"firmware", h.Firmware, false)
	}
	if h.SharedFS == SharedFSVirtioFS {
		checkFile(prefix+"virtio_fs_daemon", h.VirtioFSDaemon, true)
	}
	return v.errs
}

func isOneOf[T comparable](value T, allowed []T) bool {
	return slices.Contains(allowed, value)
}

func joinValues[T ~string](values []T) string {
	s := make([]string, len(values))
	for i, v := range values {
		s[i] = string(v)
	}
	return strings.Join(s, ", ")
}

// formatValue writes a value the way it would appear in a TOML file.
func formatValue(v any) string {
	if items, ok := v.([]any); ok {
		s := make([]string, len(items))
		for i, item := range items {
			s[i] = formatValue(item)
		}
		return "[" + strings.Join(s, ", ") + "]"
	}
	if rv := reflect.ValueOf(v); rv.Kind() == reflect.String {
		return strconv.Quote(rv.String())
	}
	return fmt.Sprint(v)
}

// sortFieldErrors orders errors by key so that messages from map-ordered
// input are stable.
func sortFieldErrors(errs []error) {
	slices.SortStableFunc(errs, func(a, b error) int {
		var fa, fb *FieldError
		if !errors.As(a, &fa) || !errors.As(b, &fb) {
			return 0
		}
		return strings.Compare(fa.Key, fb.Key)
	})
}

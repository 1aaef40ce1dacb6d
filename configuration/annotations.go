package configuration

import (
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// AnnotationPrefix starts the pod annotations that configure a sandbox. Kasa
// uses Kata Containers' names so pods written for Kata keep working.
const AnnotationPrefix = "io.katacontainers.config."

// override is one hypervisor key a pod annotation may set.
type override struct {
	// key is the HypervisorConfig TOML key.
	key string
	// pathList is the valid_*_paths key a path-valued override must match.
	pathList string
	set      func(h *HypervisorConfig, value string) error
}

// hypervisorOverrides is the allowlist, by annotation suffix. Anything not
// here is refused; enable_annotations narrows it further per file.
var hypervisorOverrides = map[string]override{
	"path":   {"path", "valid_hypervisor_paths", setString(func(h *HypervisorConfig) *string { return &h.Path })},
	"kernel": {"kernel", "valid_kernel_paths", setString(func(h *HypervisorConfig) *string { return &h.Kernel })},
	// A pod that names its initrd boots from it, not from the configured image.
	"initrd": {"initrd", "valid_initrd_paths", func(h *HypervisorConfig, value string) error {
		h.Initrd, h.Image = value, ""
		return nil
	}},
	"virtio_fs_daemon":  {"virtio_fs_daemon", "valid_virtio_fs_daemon_paths", setString(func(h *HypervisorConfig) *string { return &h.VirtioFSDaemon })},
	"machine_type":      {"machine_type", "", setString(func(h *HypervisorConfig) *MachineType { return &h.MachineType })},
	"shared_fs":         {"shared_fs", "", setString(func(h *HypervisorConfig) *SharedFS { return &h.SharedFS })},
	"kernel_params":     {"kernel_params", "", appendKernelParams},
	"default_vcpus":     {"default_vcpus", "", setInt(func(h *HypervisorConfig) *int { return &h.DefaultVCPUs })},
	"default_maxvcpus":  {"default_maxvcpus", "", setInt(func(h *HypervisorConfig) *int { return &h.DefaultMaxVCPUs })},
	"default_max_vcpus": {"default_maxvcpus", "", setInt(func(h *HypervisorConfig) *int { return &h.DefaultMaxVCPUs })}, // Kata's annotation name
	"default_memory":    {"default_memory", "", setInt(func(h *HypervisorConfig) *int { return &h.DefaultMemory })},
	"msize_9p":          {"msize_9p", "", setInt(func(h *HypervisorConfig) *int { return &h.MSize9P })},
	"enable_debug":      {"enable_debug", "", setBool(func(h *HypervisorConfig) *bool { return &h.EnableDebug })},
}

func setString[T ~string](field func(*HypervisorConfig) *T) func(*HypervisorConfig, string) error {
	return func(h *HypervisorConfig, value string) error {
		*field(h) = T(value)
		return nil
	}
}

func setInt(field func(*HypervisorConfig) *int) func(*HypervisorConfig, string) error {
	return func(h *HypervisorConfig, value string) error {
		n, err := strconv.Atoi(value)
		if err != nil {
			return errors.New("not an integer")
		}
		*field(h) = n
		return nil
	}
}

func setBool(field func(*HypervisorConfig) *bool) func(*HypervisorConfig, string) error {
	return func(h *HypervisorConfig, value string) error {
		b, err := strconv.ParseBool(value)
		if err != nil {
			return errors.New("not a boolean (true or false)")
		}
		*field(h) = b
		return nil
	}
}

// appendKernelParams adds to the file's parameters rather than replacing
// them, as Kata does, so a pod cannot drop the operator's parameters.
func appendKernelParams(h *HypervisorConfig, value string) error {
	h.KernelParams = strings.TrimSpace(h.KernelParams + " " + value)
	return nil
}

// ApplyAnnotations returns a validated copy of c with the pod's
// io.katacontainers.config.hypervisor.<key> annotations applied; c is not
// modified. A key is overridden only if it is on Kasa's allowlist and an
// enable_annotations regexp matches all of it; a path-valued key must also
// match the corresponding valid_*_paths glob list. Every other annotation
// under AnnotationPrefix is an error, except runtime ones, which are not
// overridable and ignored. Annotations outside the prefix are ignored.
func (c *Config) ApplyAnnotations(annotations map[string]string) (*Config, error) {
	out := c.Clone()
	prefix := "hypervisor." + string(c.HypervisorName) + "."
	enabled := make([]*regexp.Regexp, 0, len(c.Hypervisor.EnableAnnotations))
	for _, expr := range c.Hypervisor.EnableAnnotations {
		if re, err := compileAnchored(expr); err == nil {
			enabled = append(enabled, re)
		}
	}

	var errs []error
	setBy := map[string]string{} // dotted key -> annotation that set it
	for _, ann := range slices.Sorted(maps.Keys(annotations)) {
		if !strings.HasPrefix(ann, AnnotationPrefix) {
			continue
		}
		value := annotations[ann]
		refuse := func(key, reason string) {
			errs = append(errs, &FieldError{File: c.Path, Annotation: ann, Key: key, Value: value, Reason: reason})
		}
		section, name, _ := strings.Cut(strings.TrimPrefix(ann, AnnotationPrefix), ".")
		switch section {
		case "hypervisor":
		case "runtime":
			continue
		case "agent":
			refuse("", "agent options cannot be overridden by pod annotations")
			continue
		default:
			refuse("", "unknown annotation")
			continue
		}

		o, ok := hypervisorOverrides[name]
		switch {
		case !ok && kataHypervisorKeys[name]:
			refuse("", "recognised Kata annotation, not supported by Kasa")
		case !ok && isHypervisorKey(name):
			refuse(prefix+name, "cannot be overridden by pod annotations")
		case !ok:
			refuse("", "unknown annotation")
		case !matchesAny(enabled, name, o.key):
			refuse(prefix+o.key, fmt.Sprintf("not enabled: no %senable_annotations entry in %s matches %q",
				prefix, fileLabel(c.Path), name))
		case setBy[prefix+o.key] != "":
			refuse(prefix+o.key, "conflicts with annotation "+setBy[prefix+o.key])
		default:
			if o.pathList != "" {
				if reason := checkAnnotatedPath(value, pathPatterns(&c.Hypervisor, o.pathList), prefix+o.pathList, c.Path); reason != "" {
					refuse(prefix+o.key, reason)
					continue
				}
			}
			if err := o.set(&out.Hypervisor, value); err != nil {
				refuse(prefix+o.key, err.Error())
				continue
			}
			setBy[prefix+o.key] = ann
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	// An override never bypasses validation; blame the annotation for the
	// values it set.
	if err := out.Validate(); err != nil {
		var joined interface{ Unwrap() []error }
		if errors.As(err, &joined) {
			for _, e := range joined.Unwrap() {
				if fe, ok := e.(*FieldError); ok && setBy[fe.Key] != "" {
					fe.Annotation = setBy[fe.Key]
				}
			}
		}
		return nil, err
	}
	return out, nil
}

// checkAnnotatedPath returns why path may not be set by an annotation, or "".
func checkAnnotatedPath(path string, patterns []string, listKey, file string) string {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return "must be a clean absolute path"
	}
	if len(patterns) == 0 {
		return fmt.Sprintf("%s in %s is empty, so this path cannot be overridden", listKey, fileLabel(file))
	}
	for _, p := range patterns {
		if ok, _ := filepath.Match(p, path); ok {
			return ""
		}
	}
	return fmt.Sprintf("not matched by %s in %s", listKey, fileLabel(file))
}

func pathPatterns(h *HypervisorConfig, listKey string) []string {
	switch listKey {
	case "valid_hypervisor_paths":
		return h.ValidHypervisorPaths
	case "valid_kernel_paths":
		return h.ValidKernelPaths
	case "valid_initrd_paths":
		return h.ValidInitrdPaths
	case "valid_virtio_fs_daemon_paths":
		return h.ValidVirtioFSDaemonPaths
	}
	return nil
}

// matchesAny reports whether an enable_annotations entry matches the
// annotation's key name or, for an alias, the TOML key it sets.
func matchesAny(enabled []*regexp.Regexp, names ...string) bool {
	for _, re := range enabled {
		for _, n := range names {
			if re.MatchString(n) {
				return true
			}
		}
	}
	return false
}

func isHypervisorKey(key string) bool {
	_, ok := tomlFields(reflect.TypeFor[HypervisorConfig]())[key]
	return ok
}

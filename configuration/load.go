package configuration

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"reflect"
	"strings"

	"github.com/BurntSushi/toml"
)

// EnvConfigFile names the environment variable that points at a config file.
const EnvConfigFile = "KASA_CONF_FILE"

// The system locations searched after the shim option and $KASA_CONF_FILE.
// They are variables so tests can redirect them.
var (
	// SystemConfigPath is the operator's file.
	SystemConfigPath = "/etc/kasa/configuration.toml"
	// DefaultsConfigPath is the file `make install` ships.
	DefaultsConfigPath = "/usr/share/defaults/kasa/configuration.toml"
)

// Load finds, decodes and validates the configuration. The first existing
// file of explicitPath (the shim's ConfigPath option), $KASA_CONF_FILE,
// SystemConfigPath and DefaultsConfigPath wins; when none exists the embedded
// defaults are used. The drop-in files of config.d beside it (DropInDir)
// are merged on top. Warnings (unknown or unsupported keys) are returned
// even when err is not nil.
func Load(explicitPath string) (*Config, []Warning, error) {
	path, err := ResolvePath(explicitPath)
	if err != nil {
		return nil, nil, err
	}
	if path == "" {
		return loadSources(source{path: "", data: embeddedFile}, DropInDir(""))
	}
	return LoadFile(path)
}

// ResolvePath returns the file Load would read, or "" for the embedded
// defaults. An explicit path or $KASA_CONF_FILE that does not exist is an
// error: the caller asked for that file.
func ResolvePath(explicitPath string) (string, error) {
	candidates := []struct {
		path, origin string
		required     bool
	}{
		{explicitPath, "ConfigPath option", true},
		{os.Getenv(EnvConfigFile), "$" + EnvConfigFile, true},
		{SystemConfigPath, "", false},
		{DefaultsConfigPath, "", false},
	}
	for _, c := range candidates {
		if c.path == "" {
			continue
		}
		fi, err := os.Stat(c.path)
		switch {
		case err == nil && fi.IsDir():
			return "", fmt.Errorf("failed to read config from %q: is a directory", c.path)
		case err == nil:
			return c.path, nil
		case errors.Is(err, fs.ErrNotExist) && !c.required:
			continue
		case c.required:
			return "", fmt.Errorf("failed to read config from %q (from %s): %w", c.path, c.origin, err)
		default:
			return "", fmt.Errorf("failed to read config from %q: %w", c.path, err)
		}
	}
	return "", nil
}

// LoadFile decodes and validates one configuration file and the drop-in
// files beside it (DropInDir).
func LoadFile(path string) (*Config, []Warning, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("failed to read config from %q: %w", path, err)
	}
	return loadSources(source{path: path, data: data}, DropInDir(path))
}

// loadSources reads the drop-in files of dir and decodes them over main.
func loadSources(main source, dir string) (*Config, []Warning, error) {
	dropIns, err := readDropIns(dir)
	if err != nil {
		return nil, nil, err
	}
	return decode(append([]source{main}, dropIns...))
}

// source is one configuration file's name ("" for the embedded defaults)
// and bytes.
type source struct {
	path string
	data []byte
}

// fileLayout is the top level of a file. The hypervisor table stays raw
// until its name is known, because the name chooses its defaults.
type fileLayout struct {
	Hypervisor map[string]toml.Primitive `toml:"hypervisor"`
	Agent      struct {
		Kata agentFile `toml:"kata"`
	} `toml:"agent"`
	Runtime RuntimeConfig `toml:"runtime"`
	Factory FactoryConfig `toml:"factory"`
}

// decode turns the main file and its drop-ins, in order, into a validated
// Config: each file sets only the keys it names, so a later file overrides
// an earlier one key by key. srcs[0] is the main file.
func decode(srcs []source) (*Config, []Warning, error) {
	// A first, untyped pass finds every wrong table shape and value type at
	// once, with the key's full name; the typed decoder stops at the first.
	var name HypervisorName
	var errs []error
	for i, src := range srcs {
		var raw map[string]any
		if _, err := toml.Decode(string(src.data), &raw); err != nil {
			return nil, nil, fmt.Errorf("failed to read config from %q: %w", fileLabel(src.path), err)
		}
		n, shapeErrs := checkShape(src.path, raw, i == 0)
		errs = append(errs, shapeErrs...)
		switch {
		case i == 0:
			name = n
		case n != "" && n != name && len(shapeErrs) == 0:
			errs = append(errs, &FieldError{File: src.path, Key: "hypervisor." + string(n),
				Reason: fmt.Sprintf("a drop-in file may only set keys of the main file's [hypervisor.%s] table (%s)", name, fileLabel(srcs[0].path))})
		}
	}
	if len(errs) > 0 {
		return nil, nil, errors.Join(errs...)
	}

	cfg := defaultConfig(name)
	cfg.Path = srcs[0].path
	cfg.Origins = map[string]string{}
	layout := fileLayout{Runtime: cfg.Runtime, Factory: cfg.Factory}
	layout.Agent.Kata = cfg.Agent.toFile()
	var warnings []Warning
	for i, src := range srcs {
		layout.Hypervisor = nil
		md, err := toml.Decode(string(src.data), &layout)
		if prim, ok := layout.Hypervisor[string(name)]; ok && err == nil {
			err = md.PrimitiveDecode(prim, &cfg.Hypervisor)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("failed to read config from %q: %w", fileLabel(src.path), err)
		}
		if i > 0 {
			cfg.DropIns = append(cfg.DropIns, src.path)
		}
		undecoded := md.Undecoded()
		recordOrigins(cfg.Origins, src.path, &md, undecoded)
		oneGuestRoot(&cfg.Hypervisor, cfg.Origins, src.path, &md, "hypervisor."+string(name))
		warnings = append(warnings, undecodedWarnings(src.path, name, undecoded)...)
	}
	cfg.Agent = layout.Agent.Kata.toConfig()
	cfg.Runtime = layout.Runtime
	cfg.Factory = layout.Factory

	if err := cfg.Validate(); err != nil {
		return nil, warnings, err
	}
	return cfg, warnings, nil
}

// oneGuestRoot keeps the guest's root that a file names: a file that sets
// image but not initrd (or initrd but not image) replaces the other, which an
// earlier file or the defaults set, so that naming one is enough. A file
// that sets both gets Validate's error.
func oneGuestRoot(h *HypervisorConfig, origins map[string]string, file string, md *toml.MetaData, table string) {
	keys := strings.Split(table, ".")
	image := md.IsDefined(append(keys, "image")...)
	initrd := md.IsDefined(append(keys, "initrd")...)
	switch {
	case image && !initrd && h.Initrd != "":
		h.Initrd = ""
		origins[table+".initrd"] = file
	case initrd && !image && h.Image != "":
		h.Image = ""
		origins[table+".image"] = file
	}
}

// checkShape checks that the file has exactly one supported hypervisor table
// (at most one for a drop-in, !main), that the known sections are tables
// and that every known key has the right TOML type. It returns the
// hypervisor's name, "" when a drop-in has none.
func checkShape(path string, raw map[string]any, main bool) (HypervisorName, []error) {
	var errs []error
	fail := func(key string, value any, format string, args ...any) {
		errs = append(errs, &FieldError{File: path, Key: key, Value: value, Reason: fmt.Sprintf(format, args...)})
	}

	var name HypervisorName
	hypervisors, ok := raw["hypervisor"].(map[string]any)
	switch {
	case raw["hypervisor"] != nil && !ok:
		fail("hypervisor", raw["hypervisor"], "must be a table [hypervisor.<name>]")
	case len(hypervisors) == 0 && !main:
	case len(hypervisors) != 1:
		fail("hypervisor", nil, "exactly one [hypervisor.<name>] table is required, found %d; supported names are %s",
			len(hypervisors), joinValues(hypervisorNames))
	}
	for n, table := range hypervisors {
		name = HypervisorName(n)
		if len(hypervisors) == 1 && !isOneOf(name, hypervisorNames) {
			fail("hypervisor."+n, nil, "%s", unsupportedHypervisor(name))
			continue
		}
		errs = append(errs, checkTable(path, "hypervisor."+n, table, reflect.TypeFor[HypervisorConfig]())...)
	}

	if agents, ok := raw["agent"].(map[string]any); ok {
		if kata, ok := agents["kata"]; ok {
			errs = append(errs, checkTable(path, "agent.kata", kata, reflect.TypeFor[agentFile]())...)
		}
	} else if raw["agent"] != nil {
		fail("agent", raw["agent"], "must be a table [agent.kata]")
	}
	if rt, ok := raw["runtime"]; ok {
		errs = append(errs, checkTable(path, "runtime", rt, reflect.TypeFor[RuntimeConfig]())...)
	}
	if f, ok := raw["factory"]; ok {
		errs = append(errs, checkTable(path, "factory", f, reflect.TypeFor[FactoryConfig]())...)
	}
	return name, errs
}

// checkTable checks the TOML types of the keys of table that decode into a
// field of struct type t. Unknown keys are left to undecodedWarnings.
func checkTable(path, prefix string, table any, t reflect.Type) []error {
	m, ok := table.(map[string]any)
	if !ok {
		return []error{&FieldError{File: path, Key: prefix, Value: table, Reason: "must be a table [" + prefix + "]"}}
	}
	fields := tomlFields(t)
	var errs []error
	for key, value := range m {
		ft, known := fields[key]
		if !known {
			continue
		}
		if want := tomlTypeOf(ft); want != "" && want != valueTypeName(value) {
			errs = append(errs, &FieldError{File: path, Key: prefix + "." + key, Value: value,
				Reason: fmt.Sprintf("wrong type %s, want %s", valueTypeName(value), want)})
			continue
		}
		if items, ok := value.([]any); ok {
			for i, item := range items {
				if _, ok := item.(string); !ok {
					errs = append(errs, &FieldError{File: path, Key: fmt.Sprintf("%s.%s[%d]", prefix, key, i), Value: item,
						Reason: fmt.Sprintf("wrong type %s, want string", valueTypeName(item))})
				}
			}
		}
	}
	sortFieldErrors(errs)
	return errs
}

// tomlFields maps the toml tags of struct type t to the field types.
func tomlFields(t reflect.Type) map[string]reflect.Type {
	fields := make(map[string]reflect.Type, t.NumField())
	for f := range t.Fields() {
		if tag := f.Tag.Get("toml"); tag != "" && tag != "-" {
			fields[tag] = f.Type
		}
	}
	return fields
}

// tomlTypeOf names the TOML type that decodes into a field of type t.
func tomlTypeOf(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Int:
		return "integer"
	case reflect.Bool:
		return "boolean"
	case reflect.Slice:
		return "array"
	}
	return ""
}

// valueTypeName names the TOML type of a value decoded into an any.
func valueTypeName(v any) string {
	switch v.(type) {
	case string:
		return "string"
	case int64:
		return "integer"
	case float64:
		return "float"
	case bool:
		return "boolean"
	case []any, []map[string]any:
		return "array"
	case map[string]any:
		return "table"
	}
	return "datetime"
}

// fileLabel is how messages name the file a configuration came from.
func fileLabel(path string) string {
	if path == "" {
		return "embedded configuration.toml"
	}
	return path
}

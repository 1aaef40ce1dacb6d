package configuration

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"

	"github.com/BurntSushi/toml"
)

// DropInDirName is the directory of drop-in files beside a configuration
// file, as in Kata Containers: every config.d/*.toml is merged over the
// main file in lexical order, so "50-memory.toml" overrides what the main
// file and "10-debug.toml" set, key by key.
const DropInDirName = "config.d"

// maxDropIns bounds how many drop-in files are read.
const maxDropIns = 256

// DropInDir returns the drop-in directory of the main file path: config.d
// beside it. For the embedded defaults (path "") it is config.d beside
// SystemConfigPath, so an operator can change one key without copying the
// whole file.
func DropInDir(path string) string {
	if path == "" {
		path = SystemConfigPath
	}
	return filepath.Join(filepath.Dir(path), DropInDirName)
}

// readDropIns reads dir's *.toml files in lexical order. A missing dir has
// none; anything else that cannot be read is an error naming the file.
func readDropIns(dir string) ([]source, error) {
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("failed to read drop-in directory %q: %w", dir, err)
	}
	var out []source
	for _, e := range entries { // ReadDir sorts by name
		if !strings.HasSuffix(e.Name(), ".toml") || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if len(out) == maxDropIns {
			return nil, fmt.Errorf("drop-in directory %q: more than %d .toml files", dir, maxDropIns)
		}
		path := filepath.Join(dir, e.Name())
		fi, err := os.Stat(path)
		if err == nil && !fi.Mode().IsRegular() {
			err = fmt.Errorf("not a regular file")
		}
		var data []byte
		if err == nil {
			data, err = os.ReadFile(path)
		}
		if err != nil {
			return nil, fmt.Errorf("failed to read config from %q (drop-in): %w", path, err)
		}
		out = append(out, source{path: path, data: data})
	}
	return out, nil
}

// recordOrigins notes file as the origin of every value md's file set
// (tables and ignored keys are left out).
func recordOrigins(origins map[string]string, file string, md *toml.MetaData, undecoded []toml.Key) {
	ignored := make(map[string]bool, len(undecoded))
	for _, k := range undecoded {
		ignored[k.String()] = true
	}
	for _, k := range md.Keys() {
		if md.Type(k...) == "Hash" || ignored[k.String()] {
			continue
		}
		origins[k.String()] = file
	}
}

// Setting is one effective configuration value and where it came from.
type Setting struct {
	// Key is the dotted TOML key, e.g. hypervisor.qemu.default_memory.
	Key   string `json:"key"`
	Value any    `json:"value"`
	// Origin is the file that set the value last, "embedded
	// configuration.toml", or "default" when no file set it.
	Origin string `json:"origin"`
}

// Settings lists every key of the configuration with its effective value
// and origin, in the order of the configuration's tables.
func (c *Config) Settings() []Setting {
	var out []Setting
	add := func(prefix string, v reflect.Value) {
		for f := range v.Type().Fields() {
			tag := f.Tag.Get("toml")
			if tag == "" || tag == "-" {
				continue
			}
			key := prefix + tag
			origin := "default"
			if file, ok := c.Origins[key]; ok {
				origin = fileLabel(file)
			}
			out = append(out, Setting{Key: key, Value: v.FieldByIndex(f.Index).Interface(), Origin: origin})
		}
	}
	add("hypervisor."+string(c.HypervisorName)+".", reflect.ValueOf(c.Hypervisor))
	add("agent.kata.", reflect.ValueOf(c.Agent.toFile()))
	add("runtime.", reflect.ValueOf(c.Runtime))
	add("factory.", reflect.ValueOf(c.Factory))
	return out
}

// originOf is the file that set key (its [i] index dropped), or the main
// file when none did.
func (c *Config) originOf(key string) string {
	if i := strings.IndexByte(key, '['); i >= 0 {
		key = key[:i]
	}
	if file, ok := c.Origins[key]; ok {
		return file
	}
	return c.Path
}

package ctrtest

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// hostFile is a file of the host as it goes into a test image.
type hostFile struct {
	mode int64
	data []byte
}

// multiarch is Debian's library directory name per GOARCH.
var multiarch = map[string]string{"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}

// libDirs are where a DT_NEEDED library is looked for, in the order of the
// dynamic loader's default search path on Debian.
func libDirs() []string {
	var dirs []string
	if t := multiarch[runtime.GOARCH]; t != "" {
		dirs = append(dirs, "/lib/"+t, "/usr/lib/"+t)
	}
	return append(dirs, "/lib64", "/usr/lib64", "/lib", "/usr/lib")
}

// hostFiles reads ImageOptions.HostFiles: each path (a file, or a directory
// taken whole) keyed by its path without the leading slash, symlinks
// followed, so a multi-call binary's link becomes a copy under the link's
// name. Every ELF file brings its program interpreter and its shared
// libraries (DT_NEEDED, transitively), at the paths the loader finds them,
// so dynamically linked tools run in an image without a libc of its own.
func hostFiles(paths []string) (map[string]hostFile, error) {
	files := map[string]hostFile{}
	var add func(path string) error
	add = func(path string) error {
		name := strings.TrimPrefix(filepath.Clean(path), "/")
		if _, ok := files[name]; ok {
			return nil
		}
		st, err := os.Stat(path)
		if err != nil {
			return fmt.Errorf("host file for the test image: %w", err)
		}
		if st.IsDir() {
			return filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
				if err != nil || d.IsDir() {
					return err
				}
				return add(p)
			})
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("host file %s for the test image: not a regular file or directory", path)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files[name] = hostFile{mode: int64(st.Mode().Perm()), data: data}
		deps, err := elfDeps(path, data)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := add(d); err != nil {
				return err
			}
		}
		return nil
	}
	for _, p := range paths {
		if !filepath.IsAbs(p) {
			return nil, fmt.Errorf("host file %q for the test image: want an absolute path", p)
		}
		if err := add(p); err != nil {
			return nil, err
		}
	}
	return files, nil
}

// elfDeps are the host paths of the interpreter and DT_NEEDED libraries of
// an ELF file; none for any other file.
func elfDeps(path string, data []byte) ([]string, error) {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, nil
	}
	defer f.Close()
	var deps []string
	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		interp := make([]byte, p.Filesz)
		if _, err := p.ReadAt(interp, 0); err != nil {
			return nil, fmt.Errorf("%s: program interpreter: %w", path, err)
		}
		deps = append(deps, string(bytes.TrimRight(interp, "\x00")))
	}
	needed, err := f.ImportedLibraries()
	if err != nil {
		return nil, fmt.Errorf("%s: shared libraries: %w", path, err)
	}
	for _, lib := range needed {
		found := ""
		for _, dir := range libDirs() {
			if _, err := os.Stat(filepath.Join(dir, lib)); err == nil {
				found = filepath.Join(dir, lib)
				break
			}
		}
		if found == "" {
			return nil, fmt.Errorf("%s needs %s, found in none of %s", path, lib, strings.Join(libDirs(), " "))
		}
		deps = append(deps, found)
	}
	return deps, nil
}

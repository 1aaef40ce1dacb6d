package shimv2

import (
	"fmt"
	"io"
	"path/filepath"
	"runtime"

	"github.com/kasa-runtime/kasa/version"
)

// versionFlags are the ways a shim is asked for its version: containerd's
// shim library knows only -v (and prints containerd's version); CRI-O runs
// the handler's runtime_path with --version when it starts and logs the
// answer, and Go's flag package would reject that with exit status 2.
var versionFlags = map[string]bool{"-v": true, "--v": true, "-version": true, "--version": true}

// PrintVersion answers a version request among args (the shim's
// arguments, without the program name) with Kasa's version on w, and
// reports whether it did; the shim then exits 0.
func PrintVersion(program string, args []string, w io.Writer) bool {
	asked := false
	for _, a := range args {
		if a == "--" {
			break
		}
		asked = asked || versionFlags[a]
	}
	if !asked {
		return false
	}
	commit := version.Commit
	if commit == "" {
		commit = "unknown"
	}
	fmt.Fprintf(w, "%s (Kasa) version %s, commit %s, runtime type %s, %s\n",
		filepath.Base(program), version.Version, commit, RuntimeType, runtime.Version())
	return true
}

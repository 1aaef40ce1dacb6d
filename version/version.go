// Package version carries the release and commit Kasa's binaries were built
// from; the Makefile sets both with -ldflags -X.
package version

var (
	// Version is the release, e.g. "0.1.0"; "0.0.0-dev" in a plain go build.
	Version = "0.0.0-dev"
	// Commit is the source revision; empty when unknown.
	Commit = ""
)

// Command kasa-agent is the guest's init: it serves the host's ttrpc calls.
// Started again as "kasa-agent init" by libcontainer, it becomes the init
// of a container instead.
package main

import (
	"os"

	"github.com/opencontainers/runc/libcontainer"
	_ "github.com/opencontainers/runc/libcontainer/nsenter" // joins namespaces before the Go runtime starts

	"github.com/kasa-runtime/kasa/agent/guest"
)

func init() {
	// As in runc's init.go: this runs after nsenter's constructor and
	// before main. The guest's init is never a container init, whatever the
	// kernel command line passed it: only libcontainer sets the pipe.
	if len(os.Args) > 1 && os.Args[1] == "init" && os.Getenv("_LIBCONTAINER_INITPIPE") != "" {
		libcontainer.Init() // does not return
	}
}

func main() { guest.Main() }

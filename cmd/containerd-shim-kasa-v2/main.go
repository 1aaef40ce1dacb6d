// Command containerd-shim-kasa-v2 is Kasa's containerd shim: runtime type
// io.containerd.kasa.v2, one shim and one VM per pod sandbox.
package main

import (
	"context"
	"os"

	"github.com/containerd/containerd/runtime/v2/shim"

	"github.com/kasa-runtime/kasa/shimv2"
)

func main() {
	if code, ok := shimv2.OwnCommand(os.Args, os.Stdout); ok {
		os.Exit(code)
	}
	shim.RunManager(context.Background(), shimv2.NewManager(), shimv2.BinaryOpts)
}

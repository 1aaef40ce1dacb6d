package shimv2

import (
	"os"

	"github.com/containerd/containerd/pkg/shutdown"
	"github.com/containerd/containerd/plugin"
	"github.com/containerd/containerd/runtime/v2/shim"
)

// BinaryOpts configures containerd's shim library for Kasa: the shim waits
// for its own children (QEMU) itself, so the library must neither reap them
// nor make the shim a subreaper.
func BinaryOpts(c *shim.Config) {
	c.NoReaper = true
	c.NoSubreaper = true
}

// ttrpcAddressEnv names containerd's event service for the shim; CRI-O
// leaves it empty.
const ttrpcAddressEnv = "TTRPC_ADDRESS"

func init() {
	plugin.Register(&plugin.Registration{
		Type:     plugin.TTRPCPlugin,
		ID:       "task",
		Requires: []plugin.Type{plugin.EventPlugin, plugin.InternalPlugin},
		InitFn: func(ic *plugin.InitContext) (interface{}, error) {
			pp, err := ic.GetByID(plugin.EventPlugin, "publisher")
			if err != nil {
				return nil, err
			}
			ss, err := ic.GetByID(plugin.InternalPlugin, "shutdown")
			if err != nil {
				return nil, err
			}
			// No event sink without an address: see forward.
			return newService(ic.Context, pp.(shim.Publisher), os.Getenv(ttrpcAddressEnv) == "", ss.(shutdown.Service)), nil
		},
	})
}

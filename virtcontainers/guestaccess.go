package virtcontainers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/configuration"
	"github.com/kasa-runtime/kasa/hypervisor"
	"github.com/kasa-runtime/kasa/virtcontainers/debugconsole"
	"github.com/kasa-runtime/kasa/virtcontainers/guestlog"
)

// The operator's ways into a sandbox's guest: its log on the shim's log
// (always, with a vsock transport) and its debug console (only with
// agent.kata.debug_console_enabled).

// DebugConsoleSocketName is the console's socket in the sandbox's state
// directory (/run/kasa/sbs/<id>/).
const DebugConsoleSocketName = "console.sock"

// DebugConsoleSocket is the console socket's path for sandbox id.
func DebugConsoleSocket(id string) string {
	return filepath.Join(stateDir(id), DebugConsoleSocketName)
}

// agentKernelParams are the guest kernel parameters that tell the agent
// what the [agent.kata] table asks of it.
func agentKernelParams(a configuration.AgentConfig) []string {
	var p []string
	if a.EnableDebug {
		p = append(p, api.GuestLogLevelParam+"=debug")
	}
	if a.DebugConsoleEnabled {
		p = append(p, api.DebugConsoleParam)
	}
	return p
}

// guestPortDialer dials another vsock port of vm's guest through the
// driver (the agent's channel), or is nil when the transport has no vsock
// ports.
func guestPortDialer(vm *VM, port uint32) func(ctx context.Context) (net.Conn, error) {
	if vm.Config.AgentTransport == hypervisor.TransportVirtioSerial {
		return nil
	}
	return func(ctx context.Context) (net.Conn, error) { return vm.DialGuest(ctx, port) }
}

// startGuestLog forwards the guest's log to the shim's log (ctx's logger,
// which carries the sandbox id).
func startGuestLog(ctx context.Context, vm *VM) *guestlog.Forwarder {
	dial := guestPortDialer(vm, api.GuestLogVsockPort)
	if dial == nil {
		log.G(ctx).Info("the guest's log stays on its console: the virtio-serial transport has no vsock port for it")
		return nil
	}
	return guestlog.Start(ctx, guestlog.Config{Dial: dial, Log: log.G(ctx)})
}

// startDebugConsole exposes the guest's debug console on the host socket,
// when the configuration enabled it.
func startDebugConsole(ctx context.Context, id string, cfg *configuration.Config, vm *VM) (*debugconsole.Bridge, error) {
	if !cfg.Agent.DebugConsoleEnabled {
		return nil, nil
	}
	dial := guestPortDialer(vm, api.DebugConsoleVsockPort)
	if dial == nil {
		return nil, fmt.Errorf("agent.kata.debug_console_enabled needs a vsock transport, not virtio-serial")
	}
	b, err := debugconsole.Listen(DebugConsoleSocket(id), dial, log.G(ctx))
	if err != nil {
		return nil, err
	}
	log.G(ctx).WithField("socket", b.Path()).Warn("debug console enabled: kasa exec gives a root shell in this sandbox's guest")
	return b, nil
}

// FindSandbox resolves a sandbox id, or a prefix of exactly one, among the
// sandboxes of this host (SandboxStateRoot).
func FindSandbox(prefix string) (string, error) {
	if prefix == "" || strings.ContainsAny(prefix, "/\x00") {
		return "", fmt.Errorf("%w: sandbox id %q", errdefs.ErrInvalidArgument, prefix)
	}
	entries, err := os.ReadDir(SandboxStateRoot)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	var found []string
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		if e.Name() == prefix {
			return prefix, nil
		}
		if strings.HasPrefix(e.Name(), prefix) {
			found = append(found, e.Name())
		}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("%w: no sandbox %q on this host (%s)", errdefs.ErrNotFound, prefix, SandboxStateRoot)
	case 1:
		return found[0], nil
	}
	return "", fmt.Errorf("%w: %q is a prefix of %d sandboxes (%s ...): give more of the id", errdefs.ErrInvalidArgument, prefix, len(found), strings.Join(found[:2], ", "))
}

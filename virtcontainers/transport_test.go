package virtcontainers

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kasa-runtime/kasa/configuration"
	"github.com/kasa-runtime/kasa/hypervisor"
	"github.com/kasa-runtime/kasa/hypervisor/qemu"
)

func TestSelectTransport(t *testing.T) {
	missing := errors.New("open /dev/vhost-vsock: no such file or directory")
	for _, tc := range []struct {
		want      configuration.AgentTransport
		vhostErr  error
		got       hypervisor.AgentTransport
		reasonHas string
	}{
		{configuration.TransportAuto, nil, hypervisor.TransportVsock, "kernel vhost-vsock"},
		{configuration.TransportAuto, missing, hypervisor.TransportVhostUserVsock, "no such file"},
		{"", missing, hypervisor.TransportVhostUserVsock, "vhost-user-vsock backend"},
		{configuration.TransportVsock, nil, hypervisor.TransportVsock, "agent.kata.transport"},
		{configuration.TransportVsock, missing, hypervisor.TransportVsock, "will fail"},
		{configuration.TransportVhostUserVsock, nil, hypervisor.TransportVhostUserVsock, "agent.kata.transport"},
		{configuration.TransportVirtioSerial, nil, hypervisor.TransportVirtioSerial, "agent.kata.transport"},
	} {
		got, why := selectTransport(tc.want, tc.vhostErr)
		if got != tc.got || !strings.Contains(why, tc.reasonHas) {
			t.Errorf("%q with vhost-vsock error %v: %s (%s); want %s (…%s…)", tc.want, tc.vhostErr, got, why, tc.got, tc.reasonHas)
		}
	}
}

// SelectTransport probes the device node: here, a path under the test's control.
func TestSelectTransportProbesDevice(t *testing.T) {
	old := VhostVsockDevice
	defer func() { VhostVsockDevice = old }()

	VhostVsockDevice = filepath.Join(t.TempDir(), "vhost-vsock")
	if got, why := SelectTransport(configuration.TransportAuto); got != hypervisor.TransportVhostUserVsock {
		t.Errorf("without the device: %s (%s)", got, why)
	}
	if err := os.WriteFile(VhostVsockDevice, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, why := SelectTransport(configuration.TransportAuto); got != hypervisor.TransportVsock {
		t.Errorf("with an openable device: %s (%s)", got, why)
	}
}

// The driver claims the guest CID; a device it cannot use fails the start
// before anything runs, with the way out (agent.kata.transport = "auto").
func TestStartVMVsockWithoutUsableDevice(t *testing.T) {
	old, oldRoot := qemu.VhostVsockDevice, VMStateRoot
	defer func() { qemu.VhostVsockDevice, VMStateRoot = old, oldRoot }()
	dir := t.TempDir()
	qemu.VhostVsockDevice = filepath.Join(dir, "vhost-vsock")
	if err := os.WriteFile(qemu.VhostVsockDevice, nil, 0o600); err != nil { // not the device
		t.Fatal(err)
	}
	VMStateRoot = filepath.Join(dir, "vm")
	cfg := configuration.Default()
	cfg.Factory.EnableTemplate = false
	cfg.Hypervisor.Rootless = false
	cfg.Hypervisor.Path = "/bin/true"
	cfg.Hypervisor.Accelerator = configuration.AccelTCG
	cfg.Agent.Transport = configuration.TransportVsock
	for _, f := range []*string{&cfg.Hypervisor.Kernel, &cfg.Hypervisor.Initrd} {
		*f = filepath.Join(dir, filepath.Base(*f))
		if err := os.WriteFile(*f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_, err := StartVM(context.Background(), "vsock-claim", cfg)
	if !errors.Is(err, hypervisor.ErrTransportUnavailable) || !strings.Contains(err.Error(), "guest CID") || !strings.Contains(err.Error(), `"auto"`) {
		t.Fatalf("StartVM on a plain file as vhost-vsock: %v, want ErrTransportUnavailable about the guest CID naming \"auto\"", err)
	}
	if _, err := os.Stat(filepath.Join(VMStateRoot, "vsock-claim")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed start left its state directory: %v", err)
	}
}

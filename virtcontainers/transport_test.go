package virtcontainers

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kasa-runtime/kasa/configuration"
	"github.com/kasa-runtime/kasa/hypervisor"
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
	// A file that is not the device fails the CID ioctl with a clear error
	// naming the way out.
	_, err := openVhostVsock()
	if err == nil || !strings.Contains(err.Error(), "guest CID") || !strings.Contains(err.Error(), "auto") {
		t.Errorf("openVhostVsock on a plain file: %v", err)
	}
}

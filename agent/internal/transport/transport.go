// Package transport finds the channels the host can reach the agent on:
// AF_VSOCK port 1024 when the guest has a virtio-vsock device, and the
// virtio-serial port named agent.0 when the VM has one.
package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/log"
	"github.com/mdlayher/vsock"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/agent/serialmux"
)

const (
	// VsockPort is where the agent listens on AF_VSOCK (docs/architecture.md, "Contracts").
	VsockPort = api.AgentVsockPort
	// SerialPortName is the virtserialport name the host gives the agent's port.
	SerialPortName = "agent.0"

	virtioIDVsock = "0x0013"
)

// Listen returns a listener for every transport the VM provides, waiting up
// to wait for the devices to show up. It fails if there is none.
func Listen(ctx context.Context, wait time.Duration) ([]net.Listener, error) {
	deadline := time.Now().Add(wait)
	for {
		var out []net.Listener
		if HasVsockDevice() {
			l, err := vsock.Listen(VsockPort, nil)
			if err != nil {
				return nil, fmt.Errorf("listen on vsock port %d: %w", VsockPort, err)
			}
			log.G(ctx).WithField("port", VsockPort).Info("agent listening on vsock")
			out = append(out, l)
		}
		if dev := serialPortDevice(SerialPortName); dev != "" {
			f, err := os.OpenFile(dev, os.O_RDWR, 0)
			if err != nil {
				closeAll(out)
				return nil, fmt.Errorf("open virtio-serial port %s: %w", dev, err)
			}
			log.G(ctx).WithField("device", dev).Info("agent listening on virtio-serial")
			out = append(out, serialmux.Listen(f, dev))
		}
		if len(out) > 0 {
			return out, nil
		}
		if time.Now().After(deadline) {
			return nil, errors.New("no agent transport: neither a virtio-vsock device nor a virtio-serial port named " + SerialPortName)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func closeAll(ls []net.Listener) {
	for _, l := range ls {
		l.Close()
	}
}

// Present reports whether the VM has any device the agent listens on.
func Present() bool { return HasVsockDevice() || serialPortDevice(SerialPortName) != "" }

// HasVsockDevice reports whether the VM gave the guest a virtio-vsock device.
func HasVsockDevice() bool {
	ids, _ := filepath.Glob("/sys/bus/virtio/devices/*/device")
	for _, p := range ids {
		if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == virtioIDVsock {
			return true
		}
	}
	return false
}

// serialPortDevice returns /dev/vportNpM of the port with the given name.
func serialPortDevice(name string) string {
	names, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
	for _, p := range names {
		if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == name {
			return "/dev/" + filepath.Base(filepath.Dir(p))
		}
	}
	return ""
}

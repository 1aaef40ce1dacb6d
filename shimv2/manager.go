// Package shimv2 is Kasa's containerd shim v2: it serves containerd's Task
// API by running every sandbox's containers inside one VM (virtcontainers).
// It is the only place errors become ttrpc errors.
package shimv2

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/runtime/v2/shim"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/kasa-runtime/kasa/virtcontainers"
)

// RuntimeType is what containerd knows Kasa by.
const RuntimeType = "io.containerd.kasa.v2"

// Annotations by which containerd's CRI and CRI-O say which sandbox a
// container belongs to and whether it is the sandbox itself.
const (
	annCRISandboxID     = "io.kubernetes.cri.sandbox-id"
	annCRIContainerType = "io.kubernetes.cri.container-type"
	annCRIOSandboxID    = "io.kubernetes.cri-o.SandboxID"
	annCRIOContainerTyp = "io.kubernetes.cri-o.ContainerType"
)

type manager struct{ name string }

// NewManager returns the shim manager containerd's shim library runs.
func NewManager() shim.Manager { return manager{name: RuntimeType} }

func (m manager) Name() string { return m.name }

// sandboxIDOf returns the sandbox a container belongs to: its own id unless
// CRI or CRI-O annotations name another.
func sandboxIDOf(id string, s *specs.Spec) string {
	if s == nil {
		return id
	}
	for _, k := range []string{annCRISandboxID, annCRIOSandboxID} {
		if v := s.Annotations[k]; v != "" {
			return v
		}
	}
	return id
}

// isSandboxContainer reports whether the container is a pod's sandbox
// (pause) container, or a standalone container that gets its own VM.
func isSandboxContainer(id string, s *specs.Spec) bool {
	if s == nil {
		return true
	}
	for _, k := range []string{annCRIContainerType, annCRIOContainerTyp} {
		if v, ok := s.Annotations[k]; ok {
			return v == "sandbox"
		}
	}
	return sandboxIDOf(id, s) == id
}

// isPodSandbox reports whether CRI or CRI-O marked the container as a pod's
// sandbox container, whose process the agent's pause replaces.
func isPodSandbox(s *specs.Spec) bool {
	if s == nil {
		return false
	}
	return s.Annotations[annCRIContainerType] == "sandbox" || s.Annotations[annCRIOContainerTyp] == "sandbox"
}

// Start runs `shim start`: it returns the address of the shim that serves
// the container's sandbox, starting a new shim process for a new sandbox.
// containerd runs it in the bundle directory.
func (m manager) Start(ctx context.Context, id string, opts shim.StartOpts) (_ string, retErr error) {
	spec, err := readBundleSpec(".")
	if err != nil {
		return "", err
	}
	grouping := sandboxIDOf(id, spec)
	address, err := shim.SocketAddress(ctx, opts.Address, grouping)
	if err != nil {
		return "", err
	}
	socket, err := shim.NewSocket(address)
	if err != nil {
		if !shim.SocketEaddrinuse(err) {
			return "", fmt.Errorf("create shim socket: %w", err)
		}
		// The sandbox's shim is already running: this container joins it.
		if shim.CanConnect(address) {
			if err := shim.WriteAddress("address", address); err != nil {
				return "", err
			}
			return address, nil
		}
		if err := shim.RemoveSocket(address); err != nil {
			return "", fmt.Errorf("remove stale shim socket: %w", err)
		}
		if socket, err = shim.NewSocket(address); err != nil {
			return "", fmt.Errorf("create shim socket: %w", err)
		}
	}
	defer func() {
		if retErr != nil {
			socket.Close()
			_ = shim.RemoveSocket(address)
		}
	}()
	if err := shim.WriteAddress("address", address); err != nil {
		return "", err
	}
	f, err := socket.File()
	if err != nil {
		return "", err
	}
	defer f.Close()

	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return "", err
	}
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	args := []string{"-namespace", ns, "-id", id, "-address", opts.Address}
	if opts.Debug {
		args = append(args, "-debug")
	}
	cmd := exec.Command(self, args...)
	cmd.Dir, _ = os.Getwd()
	cmd.Env = os.Environ()
	cmd.ExtraFiles = []*os.File{f}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return "", err
	}
	go cmd.Wait()
	return address, nil
}

// Stop runs `shim delete`: the shim serving the container is gone, so clean
// up whatever its sandbox left behind.
func (m manager) Stop(ctx context.Context, id string) (shim.StopStatus, error) {
	spec, err := readBundleSpec(".")
	if err != nil {
		log.G(ctx).WithError(err).Warn("shim delete: no bundle spec; cleaning up by container id")
	}
	sid := sandboxIDOf(id, spec)
	if sid != id {
		// containerd runs `shim delete` for every task whose connection
		// closes, including after a normal Delete of one container of a
		// pod whose shim serves on. The pod's VM is the sandbox
		// container's: its own `shim delete` cleans it up if the shim died.
		log.G(ctx).WithField("sandbox", sid).Debug("shim delete of a pod container: the sandbox is cleaned up with its sandbox container")
		return shim.StopStatus{ExitedAt: time.Now(), ExitStatus: 128 + int(syscall.SIGKILL)}, nil
	}
	if err := virtcontainers.CleanupSandbox(ctx, sid); err != nil {
		return shim.StopStatus{}, err
	}
	return shim.StopStatus{ExitedAt: time.Now(), ExitStatus: 128 + int(syscall.SIGKILL)}, nil
}

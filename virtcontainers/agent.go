package virtcontainers

import (
	"context"
	"encoding/json"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/kasa-runtime/kasa/agent/api"
)

// OCISpec is the OCI runtime spec of a container.
type OCISpec = specs.Spec

// agent is what a sandbox needs of the in-guest agent; *client.Client
// provides it. Errors are containerd errdefs categories.
type agent interface {
	CreateSandbox(ctx context.Context, req *api.CreateSandboxRequest) error
	DestroySandbox(ctx context.Context) error
	CreateContainer(ctx context.Context, req *api.CreateContainerRequest) error
	StartContainer(ctx context.Context, containerID string) error
	RemoveContainer(ctx context.Context, containerID string, timeoutSeconds uint32) error
	ExecProcess(ctx context.Context, req *api.ExecProcessRequest) error
	SignalProcess(ctx context.Context, containerID, execID string, signal uint32, all bool) error
	WaitProcess(ctx context.Context, containerID, execID string) (*api.WaitProcessResponse, error)
	RemoveProcess(ctx context.Context, containerID, execID string) error
	ListProcesses(ctx context.Context, containerID string) ([]*api.ProcessInfo, error)
	UpdateContainer(ctx context.Context, containerID string, res *api.LinuxResources) error
	StatsContainer(ctx context.Context, containerID string) (*api.StatsContainerResponse, error)
	PauseContainer(ctx context.Context, containerID string) error
	ResumeContainer(ctx context.Context, containerID string) error
	WriteStdin(ctx context.Context, containerID, execID string, data []byte) (int, error)
	ReadStdout(ctx context.Context, containerID, execID string, max uint32) (data []byte, eof bool, err error)
	ReadStderr(ctx context.Context, containerID, execID string, max uint32) (data []byte, eof bool, err error)
	CloseStdin(ctx context.Context, containerID, execID string) error
	TtyWinResize(ctx context.Context, containerID, execID string, rows, cols uint32) error
	GetOOMEvent(ctx context.Context) (containerID string, err error)
	guestNetworkAgent
}

func marshalSpec(s *specs.Spec) ([]byte, error) { return json.Marshal(s) }

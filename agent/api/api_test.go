package api

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

// healthOnlyAgent answers Check and Version and nothing else, like an agent
// that is still booting. Every other RPC fails with Unimplemented.
type healthOnlyAgent struct{}

var _ AgentServiceService = healthOnlyAgent{}

func unimplemented(method string) error {
	return status.Errorf(codes.Unimplemented, "%s is not implemented by the test agent", method)
}

func (healthOnlyAgent) Check(context.Context, *CheckRequest) (*CheckResponse, error) {
	return &CheckResponse{Status: CheckResponse_SERVING}, nil
}

func (healthOnlyAgent) Version(context.Context, *VersionRequest) (*VersionResponse, error) {
	return &VersionResponse{AgentVersion: "test", ApiVersion: APIVersion, GitCommit: "0123abc"}, nil
}

func (healthOnlyAgent) GetGuestDetails(context.Context, *GetGuestDetailsRequest) (*GetGuestDetailsResponse, error) {
	return nil, unimplemented("GetGuestDetails")
}

func (healthOnlyAgent) SetGuestDateTime(context.Context, *SetGuestDateTimeRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("SetGuestDateTime")
}

func (healthOnlyAgent) DestroySandbox(context.Context, *DestroySandboxRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("DestroySandbox")
}

func (healthOnlyAgent) CreateSandbox(context.Context, *CreateSandboxRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("CreateSandbox")
}

func (healthOnlyAgent) GetOOMEvent(context.Context, *GetOOMEventRequest) (*GetOOMEventResponse, error) {
	return nil, unimplemented("GetOOMEvent")
}

func (healthOnlyAgent) GetMetrics(context.Context, *GetMetricsRequest) (*GetMetricsResponse, error) {
	return nil, unimplemented("GetMetrics")
}

func (healthOnlyAgent) CreateContainer(context.Context, *CreateContainerRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("CreateContainer")
}

func (healthOnlyAgent) StartContainer(context.Context, *StartContainerRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("StartContainer")
}

func (healthOnlyAgent) RemoveContainer(context.Context, *RemoveContainerRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("RemoveContainer")
}

func (healthOnlyAgent) ExecProcess(context.Context, *ExecProcessRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("ExecProcess")
}

func (healthOnlyAgent) SignalProcess(context.Context, *SignalProcessRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("SignalProcess")
}

func (healthOnlyAgent) WaitProcess(context.Context, *WaitProcessRequest) (*WaitProcessResponse, error) {
	return nil, unimplemented("WaitProcess")
}

func (healthOnlyAgent) RemoveProcess(context.Context, *RemoveProcessRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("RemoveProcess")
}

func (healthOnlyAgent) ListProcesses(context.Context, *ListProcessesRequest) (*ListProcessesResponse, error) {
	return nil, unimplemented("ListProcesses")
}

func (healthOnlyAgent) UpdateContainer(context.Context, *UpdateContainerRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("UpdateContainer")
}

func (healthOnlyAgent) StatsContainer(context.Context, *StatsContainerRequest) (*StatsContainerResponse, error) {
	return nil, unimplemented("StatsContainer")
}

func (healthOnlyAgent) PauseContainer(context.Context, *PauseContainerRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("PauseContainer")
}

func (healthOnlyAgent) ResumeContainer(context.Context, *ResumeContainerRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("ResumeContainer")
}

func (healthOnlyAgent) WriteStdin(context.Context, *WriteStdinRequest) (*WriteStdinResponse, error) {
	return nil, unimplemented("WriteStdin")
}

func (healthOnlyAgent) ReadStdout(context.Context, *ReadStreamRequest) (*ReadStreamResponse, error) {
	return nil, unimplemented("ReadStdout")
}

func (healthOnlyAgent) ReadStderr(context.Context, *ReadStreamRequest) (*ReadStreamResponse, error) {
	return nil, unimplemented("ReadStderr")
}

func (healthOnlyAgent) CloseStdin(context.Context, *CloseStdinRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("CloseStdin")
}

func (healthOnlyAgent) TtyWinResize(context.Context, *TtyWinResizeRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("TtyWinResize")
}

func (healthOnlyAgent) UpdateInterface(context.Context, *UpdateInterfaceRequest) (*UpdateInterfaceResponse, error) {
	return nil, unimplemented("UpdateInterface")
}

func (healthOnlyAgent) ListInterfaces(context.Context, *ListInterfacesRequest) (*ListInterfacesResponse, error) {
	return nil, unimplemented("ListInterfaces")
}

func (healthOnlyAgent) UpdateRoutes(context.Context, *UpdateRoutesRequest) (*UpdateRoutesResponse, error) {
	return nil, unimplemented("UpdateRoutes")
}

func (healthOnlyAgent) ListRoutes(context.Context, *ListRoutesRequest) (*ListRoutesResponse, error) {
	return nil, unimplemented("ListRoutes")
}

func (healthOnlyAgent) AddARPNeighbors(context.Context, *AddARPNeighborsRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("AddARPNeighbors")
}

func (healthOnlyAgent) CopyFile(context.Context, *CopyFileRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("CopyFile")
}

func (healthOnlyAgent) OnlineCPUMem(context.Context, *OnlineCPUMemRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("OnlineCPUMem")
}

func (healthOnlyAgent) MemHotplugByProbe(context.Context, *MemHotplugByProbeRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("MemHotplugByProbe")
}

// serveAgent serves svc with ttrpc on a unix socket in a temporary directory
// and returns a generated client connected to it. Both are closed when the
// test ends.
func serveAgent(t *testing.T, svc AgentServiceService) AgentServiceService {
	t.Helper()

	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatalf("ttrpc.NewServer: %v", err)
	}
	RegisterAgentServiceService(srv, svc)

	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatalf("listen on %s: %v", sock, err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("ttrpc server shutdown: %v", err)
		}
		if err := <-served; err != nil && err != ttrpc.ErrServerClosed {
			t.Errorf("ttrpc server: %v", err)
		}
	})

	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("dial %s: %v", sock, err)
	}
	client := ttrpc.NewClient(conn)
	t.Cleanup(func() { client.Close() })
	return NewAgentServiceClient(client)
}

func TestRoundTripOverUnixSocket(t *testing.T) {
	agent := serveAgent(t, healthOnlyAgent{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	check, err := agent.Check(ctx, &CheckRequest{})
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	if got := check.GetStatus(); got != CheckResponse_SERVING {
		t.Errorf("Check status = %v, want %v", got, CheckResponse_SERVING)
	}

	version, err := agent.Version(ctx, &VersionRequest{})
	if err != nil {
		t.Fatalf("Version: %v", err)
	}
	if version.GetApiVersion() != APIVersion || version.GetAgentVersion() != "test" || version.GetGitCommit() != "0123abc" {
		t.Errorf("Version = {agent_version: %q, api_version: %d, git_commit: %q}, want {%q, %d, %q}",
			version.GetAgentVersion(), version.GetApiVersion(), version.GetGitCommit(), "test", APIVersion, "0123abc")
	}

	_, err = agent.StartContainer(ctx, &StartContainerRequest{ContainerId: "c1"})
	if code := status.Code(err); code != codes.Unimplemented {
		t.Errorf("StartContainer: status code %v (err %v), want %v", code, err, codes.Unimplemented)
	}
}

// TestServiceName pins the ttrpc service name: renaming it is a breaking
// change that the versioning rule forbids within v1.
func TestServiceName(t *testing.T) {
	const want = "kasa.agent.v1.AgentService"
	if got := string(File_agent_api_agent_proto.Services().Get(0).FullName()); got != want {
		t.Errorf("service name = %q, want %q", got, want)
	}
}

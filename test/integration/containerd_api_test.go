//go:build integration

package integration

import (
	"context"
	"testing"

	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	_ "github.com/containerd/containerd/runtime" // registers the OCI types with typeurl
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/kasa-runtime/kasa/test/ctrtest"
)

// containerdAPI speaks containerd's gRPC API for what ctr 1.6 cannot do
// (task update, event subscriptions). containerd's Go client package does
// not build against runtime-spec v1.3.0, so the generated API is used.
type containerdAPI struct {
	conn *grpc.ClientConn
	ns   string
}

func dialContainerd(t *testing.T, c *ctrtest.Containerd) *containerdAPI {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+c.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &containerdAPI{conn: conn, ns: c.Namespace}
}

func (a *containerdAPI) ctx(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "containerd-namespace", a.ns)
}

// updateResources applies OCI resources to a running task.
func (a *containerdAPI) updateResources(ctx context.Context, id string, r *specs.LinuxResources) error {
	any, err := typeurl.MarshalAny(r)
	if err != nil {
		return err
	}
	_, err = tasksapi.NewTasksClient(a.conn).Update(a.ctx(ctx), &tasksapi.UpdateTaskRequest{
		ContainerID: id, Resources: &anypb.Any{TypeUrl: any.GetTypeUrl(), Value: any.GetValue()},
	})
	return err
}

// subscribe streams containerd's events matching filters.
func (a *containerdAPI) subscribe(ctx context.Context, filters ...string) (eventsapi.Events_SubscribeClient, error) {
	return eventsapi.NewEventsClient(a.conn).Subscribe(a.ctx(ctx), &eventsapi.SubscribeRequest{Filters: filters})
}

package client

import (
	"context"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Observer is told of every RPC a client makes, when it has ended: the
// method (a name of agent.proto's AgentService, never a string of the
// guest's), how long it took and its error. It must not block.
type Observer interface {
	ObserveRPC(method string, took time.Duration, err error)
}

type observerKey struct{}

// WithObserver returns ctx carrying o: a client dialled with it reports
// every RPC to o, from the first (the boot's Version) on.
func WithObserver(ctx context.Context, o Observer) context.Context {
	return context.WithValue(ctx, observerKey{}, o)
}

func observerFrom(ctx context.Context) Observer {
	o, _ := ctx.Value(observerKey{}).(Observer)
	return o
}

// UnknownMethod is what an Observer is given for a method agent.proto does
// not list.
const UnknownMethod = "unknown"

// observeRPCs returns a ttrpc client interceptor that times each RPC for
// o around next.
func observeRPCs(o Observer, next ttrpc.UnaryClientInterceptor) ttrpc.UnaryClientInterceptor {
	return func(ctx context.Context, req *ttrpc.Request, resp *ttrpc.Response, info *ttrpc.UnaryClientInfo, invoker ttrpc.Invoker) error {
		start := time.Now()
		err := next(ctx, req, resp, info, invoker)
		failed := err
		if failed == nil && resp.Status != nil && codes.Code(resp.Status.GetCode()) != codes.OK {
			// The agent's error comes back in the reply's status.
			failed = status.ErrorProto(resp.Status)
		}
		o.ObserveRPC(knownMethod(info.FullMethod), time.Since(start), failed)
		return err
	}
}

// knownMethod is the name of /kasa.agent.v1.AgentService/M if the API has
// M, else UnknownMethod: the set of names an Observer sees is bounded.
func knownMethod(fullMethod string) string {
	if replyDescriptor(fullMethod) == nil {
		return UnknownMethod
	}
	return methodName(fullMethod)
}

package client

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/kasa-runtime/kasa/agent/agenttest"
	"github.com/kasa-runtime/kasa/agent/api"
)

type rpcLog struct {
	mu    sync.Mutex
	calls []string
	errs  int
}

func (l *rpcLog) ObserveRPC(method string, took time.Duration, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, method)
	if err != nil {
		l.errs++
	}
}

// TestObserver: a client dialled with an Observer reports each RPC by its
// method name, errors included; a method the API lacks is "unknown".
func TestObserver(t *testing.T) {
	a := agenttest.Start(t)
	a.Handle("Check", func(context.Context, proto.Message) (proto.Message, error) {
		return &api.CheckResponse{Status: api.CheckResponse_SERVING}, nil
	})
	a.Handle("Version", func(context.Context, proto.Message) (proto.Message, error) {
		return nil, errors.New("no version today")
	})
	var log rpcLog
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Connect(WithObserver(ctx, &log), a.Dial)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Check(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Version(ctx); err == nil {
		t.Fatal("Version succeeded")
	}
	var out api.CheckResponse
	c.ttrpc.Call(ctx, "kasa.agent.v1.AgentService", "NoSuchMethod", &api.CheckRequest{}, &out)
	log.mu.Lock()
	defer log.mu.Unlock()
	if want := []string{"Check", "Version", UnknownMethod}; len(log.calls) != 3 || log.calls[0] != want[0] || log.calls[1] != want[1] || log.calls[2] != want[2] {
		t.Errorf("observed %v, want %v", log.calls, want)
	}
	if log.errs != 2 {
		t.Errorf("%d errors observed, want 2", log.errs)
	}
}

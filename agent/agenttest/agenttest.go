// Package agenttest is a stand-in for the in-guest agent, for the host
// side's tests: it serves every RPC of kasa.agent.v1 on a unix socket (the
// host dials it as a virtio-serial port), answers each with an empty reply
// unless a test gives the RPC a handler, counts the calls, and can fall
// silent like a hung or hostile guest.
package agenttest

import (
	"context"
	"net"
	"path/filepath"
	"sync"
	"testing"

	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/agent/serialmux"
)

// Handler answers one RPC; req is the decoded request.
type Handler func(ctx context.Context, req proto.Message) (proto.Message, error)

// Agent is a fake agent. Its zero value is not usable: call Start.
type Agent struct {
	// Path is the unix socket the fake serves on, framed as a virtio-serial
	// port (agent/serialmux); Dial opens a stream to it.
	Path string

	mu       sync.Mutex
	handlers map[string]Handler
	calls    map[string]int
	silent   bool
	closed   chan struct{}
}

// Dial opens one stream to the fake, as a driver's DialGuest opens one to
// a guest's agent: an agent/client.DialFunc.
func (a *Agent) Dial(ctx context.Context) (net.Conn, error) { return serialmux.Dial(ctx, a.Path) }

// Start serves a fake agent until the test ends.
func Start(t testing.TB) *Agent {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{Path: path, handlers: map[string]Handler{}, calls: map[string]int{}, closed: make(chan struct{})}
	sd := api.File_agent_api_agent_proto.Services().Get(0)
	desc := &ttrpc.ServiceDesc{Methods: map[string]ttrpc.Method{}}
	for i := 0; i < sd.Methods().Len(); i++ {
		m := sd.Methods().Get(i)
		desc.Methods[string(m.Name())] = a.method(t, m)
	}
	srv.RegisterService(string(sd.FullName()), desc)
	go func() {
		port, err := ln.Accept()
		if err != nil {
			return
		}
		srv.Serve(context.Background(), serialmux.Listen(port, "fake-agent"))
	}()
	t.Cleanup(func() {
		a.mu.Lock()
		close(a.closed)
		a.mu.Unlock()
		srv.Close()
		ln.Close()
	})
	return a
}

func newMessage(t testing.TB, name protoreflect.FullName) proto.Message {
	mt, err := protoregistry.GlobalTypes.FindMessageByName(name)
	if err != nil {
		t.Errorf("agenttest: message %s: %v", name, err)
		return nil
	}
	return mt.New().Interface()
}

func (a *Agent) method(t testing.TB, m protoreflect.MethodDescriptor) ttrpc.Method {
	name := string(m.Name())
	return func(ctx context.Context, unmarshal func(any) error) (any, error) {
		req := newMessage(t, m.Input().FullName())
		if err := unmarshal(req); err != nil {
			return nil, err
		}
		a.mu.Lock()
		a.calls[name]++
		silent, h := a.silent, a.handlers[name]
		a.mu.Unlock()
		if silent {
			<-a.closed // never answers, whatever the caller's deadline
			return nil, context.Canceled
		}
		if h != nil {
			return h(ctx, req)
		}
		return newMessage(t, m.Output().FullName()), nil
	}
}

// Handle makes h answer RPC method (e.g. "WaitProcess").
func (a *Agent) Handle(method string, h Handler) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.handlers[method] = h
}

// SetSilent makes every later RPC (until SetSilent(false)) go unanswered
// for as long as the test runs, as a hung guest's would.
func (a *Agent) SetSilent(silent bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.silent = silent
}

// Calls is how many times RPC method was called.
func (a *Agent) Calls(method string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls[method]
}

// Done is closed when the test ends; handlers that block should also
// return then.
func (a *Agent) Done() <-chan struct{} { return a.closed }

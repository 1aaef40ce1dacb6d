package client

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kasa-runtime/kasa/agent/api"
)

// fuzzHangTimeout bounds, in wall-clock time, a wait that only a real hang
// reaches: fuzzers share small machines that can stall a process for
// seconds (5 s was once mistaken for a hang), yet a hang must still show
// within a 20 s -fuzztime run.
const fuzzHangTimeout = 15 * time.Second

// fakeAgentConn answers every ttrpc request on conn with reply: a ttrpc
// Response message, or with raw, bytes written as they are (a whole
// frame, header included) before hanging up.
func fakeAgentConn(conn net.Conn, reply []byte, raw bool) {
	defer conn.Close()
	var hdr [10]byte
	for {
		if _, err := io.ReadFull(conn, hdr[:]); err != nil {
			return
		}
		if _, err := io.CopyN(io.Discard, conn, int64(binary.BigEndian.Uint32(hdr[:4]))); err != nil {
			return
		}
		if raw {
			conn.Write(reply)
			return
		}
		out := binary.BigEndian.AppendUint32(nil, uint32(len(reply)))
		out = append(out, hdr[4:8]...) // the request's stream id
		out = append(out, 2, 0)        // a response, no flags
		if _, err := conn.Write(append(out, reply...)); err != nil {
			return
		}
	}
}

// clientCall runs one Client method and checks what it made of the reply.
type clientCall func(t *testing.T, ctx context.Context, c *Client) error

var clientCalls = []clientCall{
	func(t *testing.T, ctx context.Context, c *Client) error {
		err := c.Check(ctx)
		return err
	},
	func(t *testing.T, ctx context.Context, c *Client) error {
		v, err := c.Version(ctx)
		_ = v.GetApiVersion() + uint32(len(v.GetAgentVersion()))
		return err
	},
	func(t *testing.T, ctx context.Context, c *Client) error {
		d, err := c.GuestDetails(ctx)
		_ = d.String()
		return err
	},
	func(t *testing.T, ctx context.Context, c *Client) error {
		return c.SetGuestDateTime(ctx, time.Unix(1700000000, 0))
	},
	func(t *testing.T, ctx context.Context, c *Client) error { return c.DestroySandbox(ctx) },
	func(t *testing.T, ctx context.Context, c *Client) error {
		return c.CreateSandbox(ctx, &api.CreateSandboxRequest{Hostname: "web-0"})
	},
	func(t *testing.T, ctx context.Context, c *Client) error {
		return c.CreateContainer(ctx, &api.CreateContainerRequest{ContainerId: "c1", OciSpecJson: []byte("{}")})
	},
	func(t *testing.T, ctx context.Context, c *Client) error { return c.StartContainer(ctx, "c1") },
	func(t *testing.T, ctx context.Context, c *Client) error { return c.RemoveContainer(ctx, "c1", 10) },
	func(t *testing.T, ctx context.Context, c *Client) error {
		return c.ExecProcess(ctx, &api.ExecProcessRequest{ContainerId: "c1", ExecId: "e1"})
	},
	func(t *testing.T, ctx context.Context, c *Client) error {
		return c.SignalProcess(ctx, "c1", "e1", 9, true)
	},
	func(t *testing.T, ctx context.Context, c *Client) error {
		r, err := c.WaitProcess(ctx, "c1", "e1")
		_ = r.GetExitedAt().AsTime()
		_ = int(r.GetExitStatus())
		return err
	},
	func(t *testing.T, ctx context.Context, c *Client) error {
		ps, err := c.ListProcesses(ctx, "c1")
		for _, p := range ps {
			_ = p.GetPid()
		}
		return err
	},
	func(t *testing.T, ctx context.Context, c *Client) error {
		return c.UpdateContainer(ctx, "c1", &api.LinuxResources{})
	},
	func(t *testing.T, ctx context.Context, c *Client) error {
		s, err := c.StatsContainer(ctx, "c1")
		_ = s.String()
		return err
	},
	func(t *testing.T, ctx context.Context, c *Client) error { return c.PauseContainer(ctx, "c1") },
	func(t *testing.T, ctx context.Context, c *Client) error { return c.ResumeContainer(ctx, "c1") },
	func(t *testing.T, ctx context.Context, c *Client) error {
		n, err := c.WriteStdin(ctx, "c1", "e1", []byte("hello"))
		if n < 0 {
			t.Errorf("WriteStdin returned n = %d", n)
		}
		return err
	},
	func(t *testing.T, ctx context.Context, c *Client) error {
		_, _, err := c.ReadStdout(ctx, "c1", "e1", 16)
		return err
	},
	func(t *testing.T, ctx context.Context, c *Client) error {
		_, _, err := c.ReadStderr(ctx, "c1", "e1", 16)
		return err
	},
	func(t *testing.T, ctx context.Context, c *Client) error { return c.CloseStdin(ctx, "c1", "e1") },
	func(t *testing.T, ctx context.Context, c *Client) error {
		return c.TtyWinResize(ctx, "c1", "e1", 24, 80)
	},
	func(t *testing.T, ctx context.Context, c *Client) error {
		id, err := c.GetOOMEvent(ctx)
		_ = len(id)
		return err
	},
	func(t *testing.T, ctx context.Context, c *Client) error {
		return c.CopyFile(ctx, &api.CopyFileRequest{Path: "/etc/hosts"})
	},
	func(t *testing.T, ctx context.Context, c *Client) error {
		iface, err := c.UpdateInterface(ctx, &api.Interface{HwAddr: "02:00:00:00:00:01"})
		_ = iface.String()
		return err
	},
	func(t *testing.T, ctx context.Context, c *Client) error {
		ifaces, err := c.ListInterfaces(ctx)
		for _, i := range ifaces {
			_ = i.GetIpAddresses()
		}
		return err
	},
	func(t *testing.T, ctx context.Context, c *Client) error {
		rs, err := c.UpdateRoutes(ctx, nil)
		_ = len(rs)
		return err
	},
	func(t *testing.T, ctx context.Context, c *Client) error {
		rs, err := c.ListRoutes(ctx)
		for _, r := range rs {
			_ = r.GetDest()
		}
		return err
	},
	func(t *testing.T, ctx context.Context, c *Client) error { return c.AddARPNeighbors(ctx, nil) },
}

// response encodes a ttrpc Response with the given status and payload.
func response(code codes.Code, msg string, payload []byte) []byte {
	r := &ttrpc.Response{Payload: payload}
	if code != codes.OK || msg != "" {
		// Marshal refuses invalid UTF-8; the payload's strings carry it.
		r.Status = status.New(code, strings.ToValidUTF8(msg, "?")).Proto()
	}
	b, err := proto.Marshal(r)
	if err != nil {
		panic(err)
	}
	return b
}

func mustMarshal(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

// FuzzAgentReplies sends each Client method an arbitrary reply, as a
// compromised guest could: a ttrpc Response with any status code, message
// and payload (unmarshalled into the method's reply type), or raw bytes
// in place of the whole frame. No method may panic or wait past the reply;
// an error must name the RPC; Check succeeds only on SERVING.
func FuzzAgentReplies(f *testing.F) {
	serving := mustMarshal(&api.CheckResponse{Status: api.CheckResponse_SERVING})
	for sel := range clientCalls {
		f.Add(uint8(sel), uint32(0), "", []byte(nil), false)
	}
	f.Add(uint8(0), uint32(0), "", serving, false)
	f.Add(uint8(0), uint32(0), "", mustMarshal(&api.CheckResponse{Status: 7}), false)
	f.Add(uint8(1), uint32(0), "", mustMarshal(&api.VersionResponse{AgentVersion: "0.3.0", ApiVersion: 9, GitCommit: "abc"}), false)
	f.Add(uint8(4), uint32(codes.Unavailable), "gone", []byte(nil), false)
	f.Add(uint8(7), uint32(codes.NotFound), "container c1: not found", []byte(nil), false)
	f.Add(uint8(7), uint32(99), strings.Repeat("x", 100), []byte("junk"), false)
	f.Add(uint8(11), uint32(0), "", mustMarshal(&api.WaitProcessResponse{ExitStatus: -1}), false)
	f.Add(uint8(12), uint32(0), "", mustMarshal(&api.ListProcessesResponse{Processes: []*api.ProcessInfo{{Pid: 1}, nil, {Pid: 4294967295}}}), false)
	f.Add(uint8(17), uint32(0), "", mustMarshal(&api.WriteStdinResponse{Len: 4294967295}), false)
	f.Add(uint8(18), uint32(0), "", mustMarshal(&api.ReadStreamResponse{Data: make([]byte, 4096), Eof: true}), false)
	f.Add(uint8(25), uint32(0), "", mustMarshal(&api.ListInterfacesResponse{Interfaces: []*api.Interface{{Name: "eth0", Mtu: 1500}}}), false)
	// Raw frames: a response for another stream, an oversized length, a
	// truncated body, a request instead of a response.
	f.Add(uint8(0), uint32(0), "", []byte{0, 0, 0, 2, 0, 0, 0, 3, 2, 0, 10, 0}, true)
	f.Add(uint8(0), uint32(0), "", []byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 2, 0}, true)
	f.Add(uint8(0), uint32(0), "", []byte{0, 0, 1, 0, 0, 0, 0, 1, 2, 0, 1, 2}, true)
	f.Add(uint8(0), uint32(0), "", append([]byte{0, 0, 0, byte(len(serving) + 2), 0, 0, 0, 1, 1, 0, 18, byte(len(serving))}, serving...), true)
	f.Fuzz(func(t *testing.T, sel uint8, code uint32, msg string, payload []byte, raw bool) {
		reply := payload
		if !raw {
			reply = response(codes.Code(code), msg, payload)
		}
		hostEnd, guestEnd := net.Pipe()
		go fakeAgentConn(guestEnd, reply, raw)
		tc := ttrpc.NewClient(hostEnd)
		defer tc.Close()
		c := &Client{conn: hostEnd, ttrpc: tc, api: api.NewAgentServiceClient(tc)}

		// The fake always answers or hangs up at once: a call that is
		// still waiting after this long waits for nothing.
		ctx, cancel := context.WithTimeout(context.Background(), fuzzHangTimeout)
		defer cancel()
		call := clientCalls[int(sel)%len(clientCalls)]
		err := call(t, ctx, c)
		// Our own deadline, not an error the guest named (a reply with
		// status DeadlineExceeded comes back as one, and that is fine).
		if ctx.Err() != nil {
			t.Fatalf("call %d did not return after the agent's reply (%v)", int(sel)%len(clientCalls), err)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "agent ") {
			t.Errorf("error does not name the agent RPC: %v", err)
		}
		if int(sel)%len(clientCalls) == 0 && err == nil && !raw {
			var resp api.CheckResponse
			if proto.Unmarshal(payload, &resp) != nil || resp.GetStatus() != api.CheckResponse_SERVING {
				t.Errorf("Check accepted a reply that is not SERVING")
			}
		}
	})
}

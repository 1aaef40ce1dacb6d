package client

import (
	"context"
	"errors"
	"strconv"
	"testing"

	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"

	"github.com/kasa-runtime/kasa/agent/api"
)

// Replies are refused before decoding when they carry more elements than
// MaxReplyElements at any depth: repeated messages, map entries, packed
// scalars. Ordinary replies pass.
func TestBoundRepliesCountsElements(t *testing.T) {
	many := MaxReplyElements + 1
	procs := make([]*api.ProcessInfo, many)
	for i := range procs {
		procs[i] = &api.ProcessInfo{Pid: 1}
	}
	stat := map[string]uint64{}
	for i := 0; i < many/2; i++ { // two elements each: the entry and its key
		stat[strconv.Itoa(i)] = 0
	}
	perCPU := make([]uint64, many)
	for _, tc := range []struct {
		method string
		reply  proto.Message
		bad    bool
	}{
		{"ListProcesses", &api.ListProcessesResponse{Processes: procs}, true},
		{"ListProcesses", &api.ListProcessesResponse{Processes: procs[:1000]}, false},
		{"StatsContainer", &api.StatsContainerResponse{CgroupStats: &api.CgroupStats{Memory: &api.MemoryStats{Stat: stat}}}, true},
		{"StatsContainer", &api.StatsContainerResponse{CgroupStats: &api.CgroupStats{Cpu: &api.CPUStats{PerCpuUsageNsec: perCPU}}}, true},
		{"StatsContainer", &api.StatsContainerResponse{CgroupStats: &api.CgroupStats{Cpu: &api.CPUStats{PerCpuUsageNsec: perCPU[:64]}, Memory: &api.MemoryStats{Stat: map[string]uint64{"rss": 1}}}}, false},
		{"ReadStdout", &api.ReadStreamResponse{Data: make([]byte, 4<<20-100)}, false},
		{"GetOOMEvent", &api.GetOOMEventResponse{ContainerId: "c"}, false},
	} {
		payload, err := proto.Marshal(tc.reply)
		if err != nil {
			t.Fatal(err)
		}
		resp := &ttrpc.Response{}
		err = boundReplies(context.Background(), &ttrpc.Request{}, resp,
			&ttrpc.UnaryClientInfo{FullMethod: "/kasa.agent.v1.AgentService/" + tc.method},
			func(context.Context, *ttrpc.Request, *ttrpc.Response) error { resp.Payload = payload; return nil })
		if got := errors.Is(err, ErrBadReply); got != tc.bad {
			t.Errorf("%s reply of %d bytes: err %v, want refused=%v", tc.method, len(payload), err, tc.bad)
		}
		if tc.bad && resp.Payload != nil {
			t.Errorf("%s: a refused reply's payload is kept", tc.method)
		}
	}
}

// Garbage is left to the decoder; only the API's own methods are counted;
// the count does not follow nesting without end.
func TestBoundRepliesGarbageAndDepth(t *testing.T) {
	if _, err := countElements([]byte{0xff, 0xff, 0xff}, nil, MaxReplyElements, 0); err != nil {
		t.Errorf("garbage: %v", err)
	}
	md := replyDescriptor("/kasa.agent.v1.AgentService/StatsContainer")
	if md == nil || md.Name() != "StatsContainerResponse" {
		t.Fatalf("descriptor: %v", md)
	}
	if replyDescriptor("/other.Service/StatsContainer") != nil || replyDescriptor("/kasa.agent.v1.AgentService/NoSuch") != nil {
		t.Error("descriptor of an unknown method")
	}
	if _, err := countElements([]byte{0x0a, 0}, md, MaxReplyElements, maxReplyDepth+1); !errors.Is(err, errReplyTooDeep) {
		t.Errorf("too deep: %v", err)
	}
}

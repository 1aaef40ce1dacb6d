package client

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/kasa-runtime/kasa/agent/api"
)

// MaxReplyElements bounds how many elements a reply of the agent may
// carry, counted at every depth: each field, each element of a repeated
// field (packed or not), each map entry. ttrpc bounds a reply to 4 MiB on
// the wire, but decoding 4 MiB of four-byte elements makes a million Go
// structs: a guest answering ListProcesses with a million processes took
// the shim from 40 MiB to 230 MiB (TestHostileGuest), and the
// same goes for the lists and maps of StatsContainer, which the kubelet
// polls. A real reply is far smaller: a pod's processes (bounded by the
// guest's pid_max, 32768 by default), a few dozen statistics. A reply over
// the bound is refused before it is decoded, with ErrBadReply.
const MaxReplyElements = 1 << 16

// maxReplyDepth bounds the nesting the count follows; the agent's replies
// nest a few levels deep.
const maxReplyDepth = 32

var errReplyTooDeep = errors.New("nested too deep")

// boundReplies is a ttrpc client interceptor that counts the elements of
// a reply, from its bytes and the API's schema, before ttrpc decodes it.
func boundReplies(ctx context.Context, req *ttrpc.Request, resp *ttrpc.Response, info *ttrpc.UnaryClientInfo, invoker ttrpc.Invoker) error {
	if err := invoker(ctx, req, resp); err != nil {
		return err
	}
	md := replyDescriptor(info.FullMethod)
	if md == nil || len(resp.Payload) == 0 {
		return nil
	}
	n, err := countElements(resp.Payload, md, MaxReplyElements, 0)
	if errors.Is(err, errReplyTooDeep) || n > MaxReplyElements {
		size := len(resp.Payload)
		resp.Payload = nil
		return fmt.Errorf("agent %s: reply of %d bytes carries more than %d elements (or nests deeper than %d): %w",
			methodName(info.FullMethod), size, MaxReplyElements, maxReplyDepth, ErrBadReply)
	}
	// A malformed reply is left to the decoder, which reports it.
	return nil
}

// replyDescriptor is the output message of /kasa.agent.v1.AgentService/M.
func replyDescriptor(fullMethod string) protoreflect.MessageDescriptor {
	svc := api.File_agent_api_agent_proto.Services().ByName("AgentService")
	if svc == nil || !strings.HasPrefix(fullMethod, "/"+string(svc.FullName())+"/") {
		return nil
	}
	m := svc.Methods().ByName(protoreflect.Name(methodName(fullMethod)))
	if m == nil {
		return nil
	}
	return m.Output()
}

func methodName(fullMethod string) string {
	return fullMethod[strings.LastIndexByte(fullMethod, '/')+1:]
}

// countElements counts the fields of b, a message of type md, and of the
// messages nested in it, stopping once the count passes limit. A field
// this schema does not know counts as one.
func countElements(b []byte, md protoreflect.MessageDescriptor, limit, depth int) (int, error) {
	if depth > maxReplyDepth {
		return 0, errReplyTooDeep
	}
	count := 0
	for len(b) > 0 && count <= limit {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return count, nil
		}
		b = b[n:]
		count++
		var fd protoreflect.FieldDescriptor
		if md != nil {
			fd = md.Fields().ByNumber(num)
		}
		if typ != protowire.BytesType || fd == nil {
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return count, nil
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return count, nil
		}
		b = b[n:]
		switch {
		case fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind:
			// Map entries are messages too.
			sub, err := countElements(v, fd.Message(), limit-count, depth+1)
			if err != nil {
				return count, err
			}
			count += sub
		case fd.IsList() && fd.Kind() != protoreflect.StringKind && fd.Kind() != protoreflect.BytesKind:
			// A packed list of scalars: every element costs a slot.
			count += packedLen(v, fd.Kind())
		}
	}
	return count, nil
}

// packedLen is how many scalars of kind k the packed payload v holds.
func packedLen(v []byte, k protoreflect.Kind) int {
	switch k {
	case protoreflect.Fixed32Kind, protoreflect.Sfixed32Kind, protoreflect.FloatKind:
		return len(v) / 4
	case protoreflect.Fixed64Kind, protoreflect.Sfixed64Kind, protoreflect.DoubleKind:
		return len(v) / 8
	}
	n := 0
	for _, c := range v {
		if c < 0x80 {
			n++ // the last byte of a varint
		}
	}
	return n
}

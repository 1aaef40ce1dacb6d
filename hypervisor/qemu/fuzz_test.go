package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

// fuzzQMPMax stands in for maxQMPMessage so that the fuzzer can reach it
// with small inputs.
const fuzzQMPMax = 256

// peakReader is the byte source under newQMPDecoder: it records the most
// bytes the decoder ever held beyond its position, i.e. its buffered part
// of the message being decoded, and hands the bytes out in small chunks so
// that messages straddle reads.
type peakReader struct {
	data []byte
	dec  *json.Decoder
	read int64
	peak int64
}

func (p *peakReader) Read(b []byte) (int, error) {
	if len(p.data) == 0 {
		return 0, io.EOF
	}
	n := copy(b[:min(len(b), 13)], p.data)
	p.data = p.data[n:]
	p.read += int64(n)
	p.peak = max(p.peak, p.read-p.dec.InputOffset())
	return n, nil
}

// FuzzQMPReader feeds arbitrary bytes, as a compromised QEMU could send
// them, through the QMP decoder, readGreeting and readLoop, with
// commands 1 and 2 pending: nothing may panic or hang, the decoder may never
// hold more than the limit of one message, every pending command gets at
// most one reply, and the loop ends with the stream, saying why.
func FuzzQMPReader(f *testing.F) {
	capsReply := `{"return": {}, "id": 1}`
	for _, s := range []string{
		"",
		greeting,
		greeting + "\r\n" + capsReply + "\r\n",
		greeting + "\r\n" + capsReply + "\r\n" +
			`{"timestamp": {"seconds": 1700000000, "microseconds": 123456}, "event": "STOP"}` + "\r\n" +
			`{"return": {"status": "paused", "singlestep": false, "running": false}, "id": 2}` + "\r\n" +
			`{"timestamp": {"seconds": 1700000001, "microseconds": 1}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}}` + "\r\n",
		greeting + "\r\n" + `{"error": {"class": "CommandNotFound", "desc": "The command foo has not been found"}, "id": 1}` + "\r\n",
		greeting + "\r\n" + `{"event": "GUEST_PANICKED", "data": {"action": "pause", "info": {"type": "hyper-v"}}}` + "\r\n",
		// Replies to nobody, duplicated, with odd ids.
		greeting + "\n" + `{"return": {}, "id": "1"}` + "\n" + `{"return": {}, "id": 1}` + "\n" + `{"return": 5, "id": 1}` + "\n" + `{"return": {}, "id": -1}` + "\n" + `{"return": {}, "id": 18446744073709551616}` + "\n",
		// Wrong types end the connection.
		greeting + "\n" + `{"event": 7}` + "\n",
		`{"QMP": null}`,
		`{"QMP": {"version": {"qemu": {"major": 99999999999999999999}}}}`,
		"[1,2,3]",
		// Pretty-printed (one message over many lines) and two messages on one line.
		"{\n  \"QMP\": {\n    \"version\": {}\n  }\n}\n" + capsReply + capsReply,
		// A message longer than the limit, over many short lines.
		greeting + "\n" + `{"event": "X", "data": [` + strings.Repeat("1,\n", 200) + "1]}\n",
		greeting + strings.Repeat("\n", 400) + capsReply,
		greeting + "\n" + strings.Repeat("x", 300) + "\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		events := 0
		q := &QMP{
			pending:  make(map[uint64]chan qmpReply),
			readDone: make(chan struct{}),
			onEvent: func(ev QMPEvent) {
				if ev.Name == "" {
					t.Error("event without a name")
				}
				events++
			},
		}
		replies := []chan qmpReply{make(chan qmpReply, 1), make(chan qmpReply, 1)}
		q.pending[1], q.pending[2] = replies[0], replies[1]

		src := &peakReader{data: data}
		dec := newQMPDecoder(src, fuzzQMPMax)
		src.dec = dec
		if err := q.readGreeting(context.Background(), dec); err == nil {
			_ = q.Version()
			go q.readLoop(dec)
			select {
			case <-q.readDone:
			case <-time.After(10 * time.Second):
				t.Fatal("readLoop did not end with the stream")
			}
			if q.readErr == nil {
				t.Fatal("readLoop ended without an error")
			}
			if errors.Is(q.readErr, errQMPMessageTooLong) && src.read-dec.InputOffset() < fuzzQMPMax {
				t.Fatalf("message too long with only %d bytes buffered", src.read-dec.InputOffset())
			}
		}
		if src.peak > fuzzQMPMax {
			t.Fatalf("the decoder buffered %d bytes of one message, limit %d", src.peak, fuzzQMPMax)
		}
		for i, ch := range replies {
			select {
			case r := <-ch:
				if _, ok := q.pending[uint64(i+1)]; ok {
					t.Errorf("command %d answered but still pending", i+1)
				}
				ret, err := r.result("cmd")
				var qe *QMPError
				if err != nil && (!errors.As(err, &qe) || qe.Command != "cmd" || ret != nil) {
					t.Errorf("reply %d: result = %q, %v", i+1, ret, err)
				}
			default:
			}
			select {
			case <-ch:
				t.Errorf("command %d got two replies", i+1)
			default:
			}
		}
	})
}

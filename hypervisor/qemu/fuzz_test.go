package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// fuzzHangTimeout bounds, in wall-clock time, a wait that only a real hang
// reaches: fuzzers share small machines that can stall a process for
// seconds (5 s was once mistaken for a hang), yet a hang must still show
// within a 20 s -fuzztime run.
const fuzzHangTimeout = 15 * time.Second

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
			case <-time.After(fuzzHangTimeout):
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

// fakeQEMU serves one QMP session on conn: the greeting and segs[0], then
// for the k-th command it reads, segs[k] with every "ID" replaced by the
// command's id, followed by a well-formed reply, so that every command is
// answered unless the fuzzer's bytes broke the stream first. It hangs up
// when the client does, and when what it sent ends inside a JSON value
// (the client would rightly wait for the rest until its context ends).
func fakeQEMU(conn net.Conn, segs [][]byte) {
	defer conn.Close()
	sent := append([]byte(greeting+"\r\n"), segs[0]...)
	if _, err := conn.Write(sent); err != nil {
		return
	}
	dec := json.NewDecoder(conn)
	for k := 1; ; k++ {
		var req qmpRequest
		if err := dec.Decode(&req); err != nil {
			return
		}
		var out []byte
		if k < len(segs) {
			out = bytes.ReplaceAll(segs[k], []byte("ID"), req.ID)
		}
		out = append(out, `{"return": {}, "id": `+string(req.ID)+"}\r\n"...)
		if _, err := conn.Write(out); err != nil {
			return
		}
		if sent = append(sent, out...); endsInsideValue(sent) {
			return
		}
	}
}

// endsInsideValue reports whether a JSON stream stops partway through a value.
func endsInsideValue(stream []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(stream))
	for {
		var v json.RawMessage
		switch err := dec.Decode(&v); {
		case err == nil:
		case errors.Is(err, io.ErrUnexpectedEOF):
			return true
		default:
			return false
		}
	}
}

// FuzzQMPSession runs NewQMP, QueryStatus and Execute on a socket pair
// against a QEMU that answers with fuzzer-made bytes (segments split at
// NUL bytes: after the greeting, then after each command): every call must
// return, with a value or an error, and Close must end the reader.
func FuzzQMPSession(f *testing.F) {
	for _, s := range []string{
		"",
		"\x00\x00" + `{"return": {"status": "running", "singlestep": false, "running": true}, "id": ID}` + "\r\n",
		`{"event": "RESUME", "timestamp": {"seconds": 1, "microseconds": 2}}` + "\r\n\x00" +
			`{"event": "STOP"}` + "\r\n\x00" + `{"return": {"status": "paused"}, "id": ID}` + "\r\n",
		"\x00" + `{"error": {"class": "GenericError", "desc": "no"}, "id": ID}` + "\r\n",
		"\x00\x00" + `{"return": "running", "id": ID}` + "\r\n",
		"\x00\x00" + `{"return": {"running": "yes"}, "id": ID}` + "\r\n",
		"\x00\x00\x00" + `{"error": null, "return": null, "id": ID}` + "\r\n",
		"\x00\x00" + `{"id": ID}` + "\r\n",
		"\x00{]\x00",
		"\x00" + `{"return": {}, "id": ID}{"return": {}, "id": ID}` + "\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		segs := bytes.SplitN(data, []byte{0}, 4)
		// A socket pair, as QEMU is given, not a net.Pipe: its buffer lets
		// both ends write at once.
		client, peer := qmpSocketPair(t)
		go fakeQEMU(peer, segs)
		ctx, cancel := context.WithTimeout(context.Background(), fuzzHangTimeout)
		defer cancel()
		q, err := NewQMP(ctx, client, func(QMPEvent) {})
		if err != nil {
			if ctx.Err() != nil {
				t.Fatalf("NewQMP did not return: %v", err)
			}
			return
		}
		defer q.Close()
		if st, err := q.QueryStatus(ctx); err == nil {
			_ = st.Running
		} else if ctx.Err() != nil {
			t.Fatalf("QueryStatus did not return: %v", err)
		}
		ret, err := q.Execute(ctx, "cont", nil)
		var qe *QMPError
		switch {
		case ctx.Err() != nil:
			t.Fatalf("Execute did not return: %v", err)
		case err == nil:
			_ = ret
		case errors.As(err, &qe):
			if qe.Command != "cont" || ret != nil {
				t.Fatalf("error reply %+v with %q", qe, ret)
			}
		case !errors.Is(err, ErrQMPClosed):
			t.Fatalf("Execute: %v, want a QMPError or ErrQMPClosed", err)
		}
		done := make(chan struct{})
		go func() { q.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(fuzzHangTimeout):
			t.Fatal("Close did not end the reader")
		}
	})
}

// qmpSocketPair is the driver's socket pair, QEMU's end as a net.Conn.
func qmpSocketPair(t *testing.T) (net.Conn, net.Conn) {
	host, vmm, err := socketPair("qmp")
	if err != nil {
		t.Fatal(err)
	}
	peer, err := net.FileConn(vmm)
	vmm.Close()
	if err != nil {
		host.Close()
		t.Fatal(err)
	}
	return host, peer
}

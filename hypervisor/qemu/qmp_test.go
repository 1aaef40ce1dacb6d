package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const greeting = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}, "capabilities": ["oob"]}}`

// qmpRequest is what the client sends.
type qmpRequest struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        json.RawMessage `json:"id"`
}

// listenPeer runs a scripted QMP server on a real unix socket: it greets,
// accepts qmp_capabilities and hands every later request to script.
func listenPeer(t *testing.T, path string, script peerScript) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	servePeer(t, ln, script)
}

// peerScript answers one request; false hangs up.
type peerScript func(conn net.Conn, dec *json.Decoder, req qmpRequest) bool

func servePeer(t *testing.T, ln net.Listener, script peerScript) {
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		send(conn, greeting)
		dec := json.NewDecoder(conn)
		for {
			var req qmpRequest
			if err := dec.Decode(&req); err != nil {
				return
			}
			if req.Execute == "qmp_capabilities" {
				send(conn, `{"return": {}, "id": `+string(req.ID)+`}`)
				continue
			}
			if !script(conn, dec, req) {
				return
			}
		}
	}()
}

func send(conn net.Conn, msg string) { conn.Write([]byte(msg + "\r\n")) }

func socketPath(t *testing.T) string { return filepath.Join(t.TempDir(), "qmp.sock") }

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestQMPEventBeforeReply(t *testing.T) {
	path := socketPath(t)
	listenPeer(t, path, func(conn net.Conn, _ *json.Decoder, req qmpRequest) bool {
		if req.Execute != "query-status" || len(req.Arguments) != 0 {
			send(conn, `{"error": {"class": "CommandNotFound", "desc": "unexpected"}, "id": `+string(req.ID)+`}`)
			return true
		}
		send(conn, `{"timestamp": {"seconds": 1700000000, "microseconds": 5}, "event": "STOP"}`)
		send(conn, `{"return": {"status": "paused", "singlestep": false, "running": false}, "id": `+string(req.ID)+`}`)
		return true
	})

	events := make(chan QMPEvent, 4)
	q, err := DialQMP(testCtx(t), path, func(ev QMPEvent) { events <- ev })
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if q.Version() != "7.2.22" {
		t.Errorf("Version = %q", q.Version())
	}
	st, err := q.QueryStatus(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if st.Running || st.Status != "paused" {
		t.Errorf("status = %+v, want paused", st)
	}
	select {
	case ev := <-events:
		if ev.Name != "STOP" || ev.Timestamp.Unix() != 1700000000 {
			t.Errorf("event = %+v", ev)
		}
	default:
		t.Error("the STOP event sent before the reply was not delivered")
	}
}

func TestQMPErrorReply(t *testing.T) {
	path := socketPath(t)
	listenPeer(t, path, func(conn net.Conn, _ *json.Decoder, req qmpRequest) bool {
		send(conn, `{"error": {"class": "GenericError", "desc": "No such device"}, "id": `+string(req.ID)+`}`)
		return true
	})
	q, err := DialQMP(testCtx(t), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	_, err = q.Execute(testCtx(t), "device_del", map[string]string{"id": "nope"})
	var qe *QMPError
	if !errors.As(err, &qe) {
		t.Fatalf("want *QMPError, got %v", err)
	}
	if qe.Class != "GenericError" || qe.Desc != "No such device" || qe.Command != "device_del" {
		t.Errorf("QMPError = %+v", qe)
	}
	// The connection stays usable after an error reply.
	if _, err := q.Execute(testCtx(t), "stop", nil); !errors.As(err, &qe) {
		t.Errorf("second command: %v", err)
	}
}

func TestQMPRepliesMatchedByID(t *testing.T) {
	path := socketPath(t)
	var held []qmpRequest
	listenPeer(t, path, func(conn net.Conn, _ *json.Decoder, req qmpRequest) bool {
		held = append(held, req)
		if len(held) < 2 {
			return true
		}
		// Answer in reverse order, each with its command's name.
		for i := len(held) - 1; i >= 0; i-- {
			send(conn, `{"return": "`+held[i].Execute+`", "id": `+string(held[i].ID)+`}`)
		}
		held = nil
		return true
	})
	q, err := DialQMP(testCtx(t), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()

	var wg sync.WaitGroup
	for _, cmd := range []string{"stop", "cont"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ret, err := q.Execute(testCtx(t), cmd, nil)
			if err != nil {
				t.Errorf("%s: %v", cmd, err)
				return
			}
			if got := strings.Trim(string(ret), `"`); got != cmd {
				t.Errorf("%s got the reply meant for %s", cmd, got)
			}
		}()
	}
	wg.Wait()
}

func TestQMPPeerClosesMidCommand(t *testing.T) {
	path := socketPath(t)
	listenPeer(t, path, func(net.Conn, *json.Decoder, qmpRequest) bool {
		return false // hang up without replying
	})
	q, err := DialQMP(testCtx(t), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	start := time.Now()
	_, err = q.Execute(testCtx(t), "quit", nil)
	if !errors.Is(err, ErrQMPClosed) {
		t.Fatalf("want ErrQMPClosed, got %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %v to notice the closed connection", d)
	}
	// Later commands fail at once.
	if _, err := q.Execute(testCtx(t), "cont", nil); !errors.Is(err, ErrQMPClosed) {
		t.Errorf("after close: want ErrQMPClosed, got %v", err)
	}
}

func TestQMPExecuteHonoursContext(t *testing.T) {
	path := socketPath(t)
	listenPeer(t, path, func(net.Conn, *json.Decoder, qmpRequest) bool { return true }) // never replies
	q, err := DialQMP(testCtx(t), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := q.Execute(ctx, "query-status", nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("want DeadlineExceeded, got %v", err)
	}
}

func TestQMPDialWaitsForSocket(t *testing.T) {
	path := socketPath(t)
	listening := make(chan net.Listener, 1)
	go func() {
		time.Sleep(150 * time.Millisecond)
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Error(err)
		}
		listening <- ln
	}()
	go func() {
		if ln := <-listening; ln != nil {
			servePeer(t, ln, func(net.Conn, *json.Decoder, qmpRequest) bool { return true })
		}
	}()
	q, err := DialQMP(testCtx(t), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	q.Close()
}

func TestQMPDialDeadline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := DialQMP(ctx, socketPath(t), nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("want DeadlineExceeded, got %v", err)
	}
}

func TestQMPNoGreeting(t *testing.T) {
	path := socketPath(t)
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		conn, err := ln.Accept()
		if err == nil {
			defer conn.Close()
			time.Sleep(2 * time.Second) // silent peer
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := DialQMP(ctx, path, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("want DeadlineExceeded from a silent peer, got %v", err)
	}
}

// TestQMPMessageLimitSpansLines: the limit is on one message, not one line.
// A message may span lines, and blank lines before it stay in the decoder's
// buffer too, so counting from the last newline let QEMU grow it without
// bound.
func TestQMPMessageLimitSpansLines(t *testing.T) {
	for name, flood := range map[string]string{
		"blank lines":     strings.Repeat("\r\n", maxQMPMessage),
		"multi-line json": `{"event": "X", "data": [` + strings.Repeat("1,\n", maxQMPMessage/2) + "1]}\n",
	} {
		t.Run(name, func(t *testing.T) {
			client, peer := net.Pipe()
			defer peer.Close()
			go func() {
				peer.Write([]byte(flood + greeting + "\r\n"))
				dec := json.NewDecoder(peer)
				var req qmpRequest
				if dec.Decode(&req) == nil {
					send(peer, `{"return": {}, "id": `+string(req.ID)+`}`)
				}
			}()
			q, err := NewQMP(testCtx(t), client, nil)
			if err == nil {
				q.Close()
			}
			// (With GOEXPERIMENT=jsonv2 the decoder's error keeps the text
			// of the reader's, not its identity.)
			if err == nil || !strings.Contains(err.Error(), errQMPMessageTooLong.Error()) {
				t.Fatalf("NewQMP after %d bytes of one message: %v, want %v", len(flood), err, errQMPMessageTooLong)
			}
		})
	}
}

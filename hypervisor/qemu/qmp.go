package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrQMPClosed is returned (wrapped) by Execute when the QMP connection is
// gone, typically because QEMU exited.
var ErrQMPClosed = errors.New("qmp: connection closed")

// QMPError is an error reply from QEMU.
type QMPError struct {
	Command string
	Class   string `json:"class"`
	Desc    string `json:"desc"`
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp: %s: %s: %s", e.Command, e.Class, e.Desc)
}

// QMPEvent is an asynchronous event from QEMU, e.g. SHUTDOWN, STOP, RESUME,
// GUEST_PANICKED.
type QMPEvent struct {
	Name      string
	Data      json.RawMessage
	Timestamp time.Time
}

// QMP is a client of QEMU's machine protocol. Commands may be issued
// concurrently; replies are matched by id.
type QMP struct {
	conn    net.Conn
	onEvent func(QMPEvent)
	version string

	writeMu sync.Mutex

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan qmpReply

	closeOnce sync.Once
	readDone  chan struct{} // closed when the reader has stopped
	readErr   error         // why; set before readDone is closed
}

type qmpReply struct {
	ret json.RawMessage
	err *QMPError
}

// qmpMessage is any message QEMU sends.
type qmpMessage struct {
	QMP *struct {
		Version struct {
			QEMU struct {
				Major, Minor, Micro int
			} `json:"qemu"`
			Package string `json:"package"`
		} `json:"version"`
	} `json:"QMP"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
	Return json.RawMessage `json:"return"`
	Error  *QMPError       `json:"error"`
	ID     json.RawMessage `json:"id"`
}

// DialQMP connects to the QMP socket at path, retrying until ctx ends
// because QEMU creates the socket a moment after it starts, then does what
// NewQMP does.
func DialQMP(ctx context.Context, path string, onEvent func(QMPEvent)) (*QMP, error) {
	conn, err := dialRetry(ctx, path)
	if err != nil {
		return nil, err
	}
	return NewQMP(ctx, conn, onEvent)
}

// NewQMP speaks QMP on conn (for example one end of a socket pair whose other
// end QEMU was started with): it reads the greeting and negotiates
// capabilities. onEvent, if not nil, is called for every event from the
// connection's reader goroutine: it must not block or call Execute. On error
// conn is closed.
//
// QEMU is not trusted: a message longer than maxQMPMessage ends the
// connection instead of growing the reader's buffer.
func NewQMP(ctx context.Context, conn net.Conn, onEvent func(QMPEvent)) (*QMP, error) {
	q := &QMP{
		conn:     conn,
		onEvent:  onEvent,
		pending:  make(map[uint64]chan qmpReply),
		readDone: make(chan struct{}),
	}
	dec := newQMPDecoder(conn, maxQMPMessage)
	if err := q.readGreeting(ctx, dec); err != nil {
		conn.Close()
		return nil, err
	}
	go q.readLoop(dec)
	if _, err := q.Execute(ctx, "qmp_capabilities", nil); err != nil {
		q.Close()
		return nil, err
	}
	return q, nil
}

// maxQMPMessage bounds one QMP message; the largest Kasa asks for
// (query-status, migration info) are a few hundred bytes.
const maxQMPMessage = 1 << 20

// errQMPMessageTooLong ends a connection whose peer sends an oversized message.
var errQMPMessageTooLong = errors.New("qmp: message too long")

// newQMPDecoder decodes QMP messages from r, never holding more than max
// bytes of one message (with the whitespace before it) in its buffer.
func newQMPDecoder(r io.Reader, max int) *json.Decoder {
	l := &messageLimitReader{r: r, max: int64(max)}
	l.dec = json.NewDecoder(l)
	return l.dec
}

// messageLimitReader feeds dec at most max bytes beyond the end of the last
// value it decoded, then fails. Counting from the decoder's position rather
// than from the last newline matters: a message may span lines (JSON allows
// a newline between any two tokens) and the decoder keeps all of it, and the
// whitespace before it, in memory until the value is complete.
type messageLimitReader struct {
	r    io.Reader
	dec  *json.Decoder
	max  int64
	read int64 // bytes handed to dec so far
}

func (l *messageLimitReader) Read(p []byte) (int, error) {
	// InputOffset is where the value being decoded starts: everything
	// read since then is in the decoder's buffer.
	room := l.max - (l.read - l.dec.InputOffset())
	if room <= 0 {
		return 0, fmt.Errorf("%w: more than %d bytes", errQMPMessageTooLong, l.max)
	}
	if int64(len(p)) > room {
		p = p[:room]
	}
	n, err := l.r.Read(p)
	l.read += int64(n)
	return n, err
}

func dialRetry(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	backoff := 5 * time.Millisecond
	for {
		conn, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			return conn, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("qmp: connecting to %s: %w (last error: %v)", path, ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 100*time.Millisecond)
	}
}

func (q *QMP) readGreeting(ctx context.Context, dec *json.Decoder) error {
	// Unblock the read when ctx ends.
	stop := context.AfterFunc(ctx, func() { q.conn.SetReadDeadline(time.Now()) })
	defer stop()
	var m qmpMessage
	if err := dec.Decode(&m); err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return fmt.Errorf("qmp: reading greeting: %w", err)
	}
	if m.QMP == nil {
		return errors.New("qmp: peer did not send a QMP greeting")
	}
	v := m.QMP.Version
	q.version = fmt.Sprintf("%d.%d.%d", v.QEMU.Major, v.QEMU.Minor, v.QEMU.Micro)
	if !stop() {
		// ctx ended just after a successful read; the deadline may be set.
		return fmt.Errorf("qmp: reading greeting: %w", ctx.Err())
	}
	return nil
}

// Version is QEMU's version from the greeting, e.g. "7.2.22".
func (q *QMP) Version() string { return q.version }

func (q *QMP) readLoop(dec *json.Decoder) {
	var err error
	for {
		var m qmpMessage
		if err = dec.Decode(&m); err != nil {
			break
		}
		if m.Event != "" {
			if q.onEvent != nil {
				ev := QMPEvent{Name: m.Event, Data: m.Data}
				if m.Timestamp != nil {
					ev.Timestamp = time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000)
				}
				q.onEvent(ev)
			}
			continue
		}
		id, perr := strconv.ParseUint(string(m.ID), 10, 64)
		if perr != nil {
			continue // not a reply to us
		}
		q.mu.Lock()
		ch, ok := q.pending[id]
		delete(q.pending, id)
		q.mu.Unlock()
		if ok {
			ch <- qmpReply{ret: m.Return, err: m.Error}
		}
	}
	q.readErr = err
	close(q.readDone)
}

// Execute runs cmd with args (marshalled to JSON; nil for none) and returns
// the reply's "return" value. An error reply is a *QMPError.
func (q *QMP) Execute(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	return q.execute(ctx, cmd, args, nil)
}

// SendFD gives QEMU a copy of f under name (QMP getfd, the descriptor
// passed with SCM_RIGHTS), for commands that take a named descriptor such
// as migrate's "fd:<name>".
func (q *QMP) SendFD(ctx context.Context, name string, f *os.File) error {
	if _, ok := q.conn.(*net.UnixConn); !ok {
		return fmt.Errorf("qmp: getfd: the connection cannot carry descriptors")
	}
	_, err := q.execute(ctx, "getfd", map[string]string{"fdname": name}, f)
	return err
}

func (q *QMP) execute(ctx context.Context, cmd string, args any, fd *os.File) (json.RawMessage, error) {
	ch := make(chan qmpReply, 1)
	q.mu.Lock()
	q.nextID++
	id := q.nextID
	q.pending[id] = ch
	q.mu.Unlock()
	forget := func() {
		q.mu.Lock()
		delete(q.pending, id)
		q.mu.Unlock()
	}

	req, err := json.Marshal(struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        uint64 `json:"id"`
	}{cmd, args, id})
	if err != nil {
		forget()
		return nil, fmt.Errorf("qmp: %s: encoding arguments: %w", cmd, err)
	}
	if err := q.write(ctx, req, fd); err != nil {
		forget()
		return nil, fmt.Errorf("qmp: %s: %w", cmd, err)
	}

	select {
	case r := <-ch:
		return r.result(cmd)
	case <-q.readDone:
		select {
		case r := <-ch: // the reply came just before the end
			return r.result(cmd)
		default:
		}
		forget()
		return nil, fmt.Errorf("qmp: %s: %w: %v", cmd, ErrQMPClosed, q.readErr)
	case <-ctx.Done():
		forget()
		return nil, fmt.Errorf("qmp: %s: %w", cmd, ctx.Err())
	}
}

func (r qmpReply) result(cmd string) (json.RawMessage, error) {
	if r.err != nil {
		e := *r.err
		e.Command = cmd
		return nil, &e
	}
	return r.ret, nil
}

func (q *QMP) write(ctx context.Context, msg []byte, fd *os.File) error {
	q.writeMu.Lock()
	defer q.writeMu.Unlock()
	select {
	case <-q.readDone:
		return fmt.Errorf("%w: %v", ErrQMPClosed, q.readErr)
	default:
	}
	deadline, _ := ctx.Deadline() // zero: none
	if err := q.conn.SetWriteDeadline(deadline); err != nil {
		return err
	}
	var err error
	if fd != nil {
		_, _, err = q.conn.(*net.UnixConn).WriteMsgUnix(append(msg, '\n'), unix.UnixRights(int(fd.Fd())), nil)
	} else {
		_, err = q.conn.Write(append(msg, '\n'))
	}
	if err != nil {
		if errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed) {
			// QEMU went away before the reader noticed.
			return fmt.Errorf("%w: %v", ErrQMPClosed, err)
		}
		return err
	}
	return nil
}

// Close closes the connection and waits for the reader to stop. Pending and
// later commands fail with ErrQMPClosed.
func (q *QMP) Close() error {
	var err error
	q.closeOnce.Do(func() { err = q.conn.Close() })
	<-q.readDone
	return err
}

// Status is the VM's run state from query-status.
type Status struct {
	Running bool   `json:"running"`
	Status  string `json:"status"` // "running", "paused", "shutdown", ...
}

// QueryStatus asks QEMU for the VM's run state.
func (q *QMP) QueryStatus(ctx context.Context) (Status, error) {
	return query[Status](ctx, q, "query-status")
}

// query runs a query command without arguments and decodes its reply.
func query[T any](ctx context.Context, q *QMP, cmd string) (T, error) {
	var v T
	raw, err := q.Execute(ctx, cmd, nil)
	if err != nil {
		return v, err
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return v, fmt.Errorf("qmp: %s: decoding %s: %w", cmd, raw, err)
	}
	return v, nil
}

// MigrationStatus is the state of a migration from query-migrate.
type MigrationStatus struct {
	Status    string `json:"status"` // "active", "completed", "failed", ...
	ErrorDesc string `json:"error-desc"`
}

// QueryMigrate asks QEMU how its migration (here: a template's save) is going.
func (q *QMP) QueryMigrate(ctx context.Context) (MigrationStatus, error) {
	return query[MigrationStatus](ctx, q, "query-migrate")
}

// Command guest is a hostile guest init for the integration test
// TestHostileGuest (test/integration/hostile_test.go): PID 1 of a test
// initramfs, booted with Kasa's normal guest kernel in place of kasa-agent.
// It serves the agent's ttrpc API on AF_VSOCK port 1024 just well enough
// for the shim to create and start a container, and from StartContainer on
// it attacks the host side with everything a guest userspace program can:
//
//   - console: writes to /dev/ttyS0 (the console QEMU hands to the shim) as
//     fast as the serial port takes it;
//   - connections: opens thousands of AF_VSOCK streams to the host (CID 2),
//     to ports nobody listens on and to the one the test listens on, holds
//     the latter open and writes to a few of them as fast as the credit
//     lets it;
//   - OOM: answers every GetOOMEvent at once with the id of a container of
//     ANOTHER pod (kasa.hostile.victim=), which the shim must not forward;
//   - output: answers ReadStdout at once with no data and no EOF (a reader
//     that spins), and ReadStderr with more than was asked (4 MiB, the
//     ttrpc maximum minus a little);
//   - ListProcesses and StatsContainer: 300000 processes, 300000 per-CPU
//     counters;
//   - guest log: on the log port (api.GuestLogVsockPort) the host dials,
//     lines as fast as the stream takes them: escape sequences, invalid
//     UTF-8, lines far over the length limit, lines not in the format;
//   - DestroySandbox: acknowledged, and the VM left running;
//   - ttrpc framing: between its real replies it writes responses for
//     stream ids the host never opened (even ids; the host's are odd), each
//     of which made the host log a line.
//
// Garbage virtio descriptors and sends beyond the advertised credit need a
// hostile guest KERNEL, not a userspace program: the Linux vsock driver
// honours the credit and builds well-formed rings whatever userspace does.
// Those attacks are covered by the simulator tests of hypervisor/vsock
// (sim_test.go, bounds_test.go and the fuzz targets of fuzz_test.go), which
// play a guest driver writing arbitrary rings and packets.
//
// Parameters come from the kernel command line (the test passes them in
// the configuration's kernel_params):
//
//	kasa.hostile.victim=ID   the container id named in the forged OOM events
//	kasa.hostile.port=P      host port the test listens on (connections are held)
//	kasa.hostile.report=R    host port the test reads this guest's counters from
//	kasa.hostile.conns=N     streams to open to port P (default 3000)
//	kasa.hostile.refused=N   connection attempts to ports nobody listens on (default 3000)
//	kasa.hostile.refuse=1    answer Check with NOT_SERVING: the sandbox never starts
//
// Every second the guest sends its counters as one JSON line to port R.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kasa-runtime/kasa/agent/api"
)

const (
	agentPort  = 1024
	hostCID    = 2
	maxReply   = 4<<20 - 1024 // under ttrpc's 4 MiB message limit
	floodChunk = 16 << 10
	// floodWriters is how many of the held streams carry data.
	floodWriters = 4
	// injectBatch forged frames go out every millisecond.
	injectBatch = 64
	// hugeList is how many processes ListProcesses claims: 1.2 MB on the
	// wire (a million, 4 MB, took this guest under TCG longer to encode
	// than the host waits).
	hugeList = 300_000
)

// Counters is what the guest reports to the test.
type Counters struct {
	Phase            string `json:"phase"`
	ConsoleBytes     int64  `json:"console_bytes"`
	ConnsHeld        int64  `json:"conns_held"`
	ConnsFailed      int64  `json:"conns_failed"`
	RefusedAttempts  int64  `json:"refused_attempts"`
	RefusedOK        int64  `json:"refused_ok"` // attempts to unlistened ports that connected (should be 0)
	StreamBytes      int64  `json:"stream_bytes"`
	OOMForged        int64  `json:"oom_forged"`
	EmptyReads       int64  `json:"empty_reads"`
	OversizeReads    int64  `json:"oversize_reads"`
	FramesInjected   int64  `json:"frames_injected"`
	DestroyIgnored   int64  `json:"destroy_ignored"`
	HugeLists        int64  `json:"huge_lists"`
	AgentConnections int64  `json:"agent_connections"`
	MetricsForged    int64  `json:"metrics_forged"`
	GuestLogBytes    int64  `json:"guest_log_bytes"`
}

var (
	counters Counters
	phase    atomic.Value
	params   = map[string]string{}
)

func add(p *int64, n int64) { atomic.AddInt64(p, n) }

func snapshot() Counters {
	c := Counters{Phase: phase.Load().(string)}
	for _, f := range []struct{ dst, src *int64 }{
		{&c.ConsoleBytes, &counters.ConsoleBytes}, {&c.ConnsHeld, &counters.ConnsHeld},
		{&c.ConnsFailed, &counters.ConnsFailed}, {&c.RefusedAttempts, &counters.RefusedAttempts},
		{&c.RefusedOK, &counters.RefusedOK}, {&c.StreamBytes, &counters.StreamBytes},
		{&c.OOMForged, &counters.OOMForged}, {&c.EmptyReads, &counters.EmptyReads},
		{&c.OversizeReads, &counters.OversizeReads}, {&c.FramesInjected, &counters.FramesInjected},
		{&c.DestroyIgnored, &counters.DestroyIgnored}, {&c.AgentConnections, &counters.AgentConnections},
		{&c.HugeLists, &counters.HugeLists}, {&c.MetricsForged, &counters.MetricsForged},
		{&c.GuestLogBytes, &counters.GuestLogBytes},
	} {
		*f.dst = atomic.LoadInt64(f.src)
	}
	return c
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "hostile: "+format+"\n", args...)
}

func main() {
	phase.Store("boot")
	if os.Getpid() == 1 {
		mountEarly()
	}
	readParams()
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil {
		lim.Cur, lim.Max = 1<<16, 1<<16
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			logf("raise RLIMIT_NOFILE: %v", err)
		}
	}
	waitVsockDevice()
	l, err := vsock.Listen(agentPort, nil)
	if err != nil {
		logf("listen on vsock port %d: %v", agentPort, err)
		hang()
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		logf("ttrpc: %v", err)
		hang()
	}
	api.RegisterAgentServiceService(srv, &agent{})
	go report()
	logf("serving the agent API on vsock port %d, victim %q", agentPort, params["victim"])
	phase.Store("serving")
	if err := srv.Serve(context.Background(), &injectingListener{Listener: l}); err != nil {
		logf("serve: %v", err)
	}
	hang()
}

// hang keeps PID 1 alive: its exit would panic the kernel, which is not
// the attack under test.
func hang() {
	for {
		time.Sleep(time.Hour)
	}
}

func mountEarly() {
	for _, m := range []struct{ src, dst, typ string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"},
	} {
		os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.typ, 0, ""); err != nil && err != unix.EBUSY {
			logf("mount %s: %v", m.dst, err)
		}
	}
}

func readParams() {
	b, _ := os.ReadFile("/proc/cmdline")
	for _, f := range strings.Fields(string(b)) {
		if k, v, ok := strings.Cut(f, "="); ok && strings.HasPrefix(k, "kasa.hostile.") {
			params[strings.TrimPrefix(k, "kasa.hostile.")] = v
		}
	}
}

func intParam(name string, def int) int {
	if n, err := strconv.Atoi(params[name]); err == nil {
		return n
	}
	return def
}

func waitVsockDevice() {
	for i := 0; i < 500; i++ {
		ids, _ := filepath.Glob("/sys/bus/virtio/devices/*/device")
		for _, p := range ids {
			if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == "0x0013" {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	logf("no virtio-vsock device")
}

// report sends the counters to the test once a second, reconnecting as
// needed (the test may not listen yet, or the stream may be refused while
// the backend is full).
func report() {
	port := intParam("report", 0)
	if port == 0 {
		return
	}
	var conn net.Conn
	for range time.Tick(time.Second) {
		if conn == nil {
			c, err := vsock.Dial(hostCID, uint32(port), nil)
			if err != nil {
				continue
			}
			conn = c
		}
		b, _ := json.Marshal(snapshot())
		conn.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := conn.Write(append(b, '\n')); err != nil {
			conn.Close()
			conn = nil
		}
	}
}

var attackOnce sync.Once

// attack starts every flood once the host has started the container.
func attack() {
	attackOnce.Do(func() {
		phase.Store("attacking")
		logf("attacking")
		go floodConsole()
		go floodGuestLog()
		go floodConnections()
		go refusedConnections()
	})
}

func floodConsole() {
	f, err := os.OpenFile("/dev/ttyS0", os.O_WRONLY|unix.O_NOCTTY, 0)
	if err != nil {
		logf("open console: %v", err)
		return
	}
	line := []byte(strings.Repeat("hostile guest console flood ", 36) + "\n")
	block := make([]byte, 0, 64<<10)
	for len(block)+len(line) <= cap(block) {
		block = append(block, line...)
	}
	for {
		n, err := f.Write(block)
		add(&counters.ConsoleBytes, int64(n))
		if err != nil {
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// floodGuestLog serves the host's log streams with as much as they take.
func floodGuestLog() {
	l, err := vsock.Listen(api.GuestLogVsockPort, nil)
	if err != nil {
		logf("listen on the guest log port: %v", err)
		return
	}
	var block []byte
	for i := 0; len(block) < 64<<10; i++ {
		block = append(block, api.FormatGuestLogLine(api.GuestLogAgent, api.LogErr, fmt.Sprintf("hostile log flood %d \x1b[2J\x1b]0;owned\x07 \xff\xfe", i))...)
		block = append(block, "k0 kernel panic - not syncing (forged)\n"...)
		block = append(block, strings.Repeat("no newline for a long while ", 300)...)
		block = append(block, '\n')
	}
	for {
		c, err := l.Accept()
		if err != nil {
			logf("guest log accept: %v", err)
			return
		}
		go func() {
			defer c.Close()
			for {
				n, err := c.Write(block)
				add(&counters.GuestLogBytes, int64(n))
				if err != nil {
					return
				}
			}
		}()
	}
}

// floodConnections opens streams to the test's port, holds them and writes
// to each as fast as it goes.
func floodConnections() {
	port := intParam("port", 0)
	if port == 0 {
		return
	}
	// The test listens once the container runs: wait for it.
	var held []net.Conn
	for i := 0; ; i++ {
		c, err := vsock.Dial(hostCID, uint32(port), nil)
		if err == nil {
			add(&counters.ConnsHeld, 1)
			held = append(held, c)
			break
		}
		if i == 600 {
			logf("port %d: %v", port, err)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	n := intParam("conns", 3000)
	payload := make([]byte, floodChunk)
	for i := range payload {
		payload[i] = byte(i)
	}
	// Four dialers; the first floodWriters streams are written to as fast
	// as the credit lets them, the others are only held (a guest has one
	// vCPU here: writing to all would starve everything else it does).
	var mu sync.Mutex
	var wg sync.WaitGroup
	for d := 0; d < 4; d++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := d; i < n; i += 4 {
				c, err := vsock.Dial(hostCID, uint32(port), nil)
				if err != nil {
					add(&counters.ConnsFailed, 1)
					continue
				}
				add(&counters.ConnsHeld, 1)
				mu.Lock()
				held = append(held, c)
				write := len(held) <= floodWriters
				mu.Unlock()
				if write {
					go func() {
						for {
							n, err := c.Write(payload)
							add(&counters.StreamBytes, int64(n))
							if err != nil {
								return // held open all the same
							}
						}
					}()
				}
			}
		}()
	}
	wg.Wait()
	mu.Lock()
	logf("%d streams held, %d refused", len(held), atomic.LoadInt64(&counters.ConnsFailed))
	mu.Unlock()
	for {
		time.Sleep(time.Hour)
		mu.Lock()
		logf("still holding %d streams", len(held))
		mu.Unlock()
	}
}

// refusedConnections knocks on ports nobody listens on.
func refusedConnections() {
	n := intParam("refused", 3000)
	for i := 0; i < n; i++ {
		add(&counters.RefusedAttempts, 1)
		c, err := vsock.Dial(hostCID, uint32(20000+i%5000), nil)
		if err == nil {
			add(&counters.RefusedOK, 1)
			c.Close()
		}
	}
}

// injectingListener hands the ttrpc server connections that write forged
// responses between the real ones.
type injectingListener struct{ net.Listener }

func (l *injectingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	add(&counters.AgentConnections, 1)
	fc := &framingConn{Conn: c}
	go fc.inject()
	return fc, nil
}

// framingConn passes the server's writes through whole ttrpc frames at a
// time, so that forged frames can go in between.
type framingConn struct {
	net.Conn
	mu      sync.Mutex
	pending []byte
	started atomic.Bool
}

const frameHeader = 10 // length u32, stream id u32, type u8, flags u8

func (c *framingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pending = append(c.pending, p...)
	for len(c.pending) >= frameHeader {
		n := frameHeader + int(binary.BigEndian.Uint32(c.pending))
		if len(c.pending) < n {
			break
		}
		if _, err := c.Conn.Write(c.pending[:n]); err != nil {
			return 0, err
		}
		c.pending = c.pending[n:]
	}
	return len(p), nil
}

// inject writes, once the attack began, responses on even stream ids (the
// host opens odd ones only) with an empty body, as fast as they go.
func (c *framingConn) inject() {
	for phase.Load().(string) != "attacking" {
		time.Sleep(50 * time.Millisecond)
	}
	var frames []byte
	for i := 0; i < injectBatch; i++ {
		var h [frameHeader]byte
		binary.BigEndian.PutUint32(h[4:], uint32(2*(i+1)))
		h[8] = 2 // response
		frames = append(frames, h[:]...)
	}
	for {
		c.mu.Lock()
		_, err := c.Conn.Write(frames)
		c.mu.Unlock()
		if err != nil {
			return
		}
		add(&counters.FramesInjected, injectBatch)
		time.Sleep(time.Millisecond)
	}
}

// agent answers just enough for a sandbox and one container.
type agent struct {
	unimplemented

	mu      sync.Mutex
	killed  chan struct{}
	oomSent atomic.Bool
}

func (a *agent) killedCh() chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.killed == nil {
		a.killed = make(chan struct{})
	}
	return a.killed
}

// Check says SERVING, unless kasa.hostile.refuse=1: then the guest never
// comes up and the host has to undo the boot.
func (a *agent) Check(context.Context, *api.CheckRequest) (*api.CheckResponse, error) {
	if params["refuse"] == "1" {
		return &api.CheckResponse{Status: api.CheckResponse_NOT_SERVING}, nil
	}
	return &api.CheckResponse{Status: api.CheckResponse_SERVING}, nil
}

func (a *agent) Version(context.Context, *api.VersionRequest) (*api.VersionResponse, error) {
	return &api.VersionResponse{AgentVersion: "hostile", ApiVersion: api.APIVersion}, nil
}

func (a *agent) SetGuestDateTime(context.Context, *api.SetGuestDateTimeRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

func (a *agent) CreateSandbox(context.Context, *api.CreateSandboxRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

func (a *agent) CreateContainer(context.Context, *api.CreateContainerRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

func (a *agent) StartContainer(context.Context, *api.StartContainerRequest) (*emptypb.Empty, error) {
	attack()
	return &emptypb.Empty{}, nil
}

func (a *agent) SignalProcess(_ context.Context, r *api.SignalProcessRequest) (*emptypb.Empty, error) {
	if r.GetSignal() == uint32(unix.SIGKILL) || r.GetSignal() == uint32(unix.SIGTERM) {
		ch := a.killedCh()
		a.mu.Lock()
		select {
		case <-ch:
		default:
			close(ch)
		}
		a.mu.Unlock()
	}
	return &emptypb.Empty{}, nil
}

func (a *agent) WaitProcess(ctx context.Context, _ *api.WaitProcessRequest) (*api.WaitProcessResponse, error) {
	select {
	case <-a.killedCh():
		return &api.WaitProcessResponse{ExitStatus: 137, ExitedAt: timestamppb.Now()}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (a *agent) RemoveContainer(context.Context, *api.RemoveContainerRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

func (a *agent) RemoveProcess(context.Context, *api.RemoveProcessRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

func (a *agent) CloseStdin(context.Context, *api.CloseStdinRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

// DestroySandbox says yes and powers nothing off.
func (a *agent) DestroySandbox(context.Context, *api.DestroySandboxRequest) (*emptypb.Empty, error) {
	add(&counters.DestroyIgnored, 1)
	return &emptypb.Empty{}, nil
}

// GetOOMEvent names the victim, another pod's container, at once, every time.
func (a *agent) GetOOMEvent(ctx context.Context, _ *api.GetOOMEventRequest) (*api.GetOOMEventResponse, error) {
	victim := params["victim"]
	if victim == "" {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	for phase.Load().(string) != "attacking" {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	add(&counters.OOMForged, 1)
	return &api.GetOOMEventResponse{ContainerId: victim}, nil
}

// GetMetrics answers, in turn, more text than the host reads (3 MiB), and
// text within the host's bound that is all forgery: an absurd memory size,
// a series naming the victim's sandbox, made-up CPU modes, a family the
// agent never sends.
func (a *agent) GetMetrics(context.Context, *api.GetMetricsRequest) (*api.GetMetricsResponse, error) {
	if atomic.AddInt64(&counters.MetricsForged, 1)%2 == 1 {
		return &api.GetMetricsResponse{PrometheusText: strings.Repeat("# flood\n", 3<<20/8)}, nil
	}
	var b strings.Builder
	b.WriteString("# TYPE kasa_guest_memory_total_bytes gauge\nkasa_guest_memory_total_bytes 1e300\n")
	fmt.Fprintf(&b, "# TYPE kasa_guest_memory_free_bytes gauge\nkasa_guest_memory_free_bytes{sandbox_id=%q} 1\n", params["victim"])
	b.WriteString("# TYPE kasa_forged_total counter\nkasa_forged_total 1\n")
	b.WriteString("# TYPE kasa_guest_cpu_seconds_total counter\n")
	for i := 0; b.Len() < 60<<10; i++ {
		fmt.Fprintf(&b, "kasa_guest_cpu_seconds_total{mode=\"forged%d\"} 1\n", i)
	}
	return &api.GetMetricsResponse{PrometheusText: b.String()}, nil
}

// ReadStdout answers at once with nothing, and no EOF.
func (a *agent) ReadStdout(context.Context, *api.ReadStreamRequest) (*api.ReadStreamResponse, error) {
	add(&counters.EmptyReads, 1)
	return &api.ReadStreamResponse{}, nil
}

// ReadStderr answers with far more than was asked.
func (a *agent) ReadStderr(_ context.Context, r *api.ReadStreamRequest) (*api.ReadStreamResponse, error) {
	add(&counters.OversizeReads, 1)
	n := int(r.GetMaxLen()) + 1
	if n < maxReply {
		n = maxReply
	}
	return &api.ReadStreamResponse{Data: make([]byte, n)}, nil
}

// StatsContainer answers with hugeList per-CPU counters: packed, a byte
// each on the wire, eight once decoded.
func (a *agent) StatsContainer(context.Context, *api.StatsContainerRequest) (*api.StatsContainerResponse, error) {
	add(&counters.HugeLists, 1)
	return &api.StatsContainerResponse{CgroupStats: &api.CgroupStats{Cpu: &api.CPUStats{PerCpuUsageNsec: make([]uint64, hugeList)}}}, nil
}

// ListProcesses answers with hugeList processes: 4 bytes each on the
// wire, and a struct each once decoded.
func (a *agent) ListProcesses(context.Context, *api.ListProcessesRequest) (*api.ListProcessesResponse, error) {
	add(&counters.HugeLists, 1)
	procs := make([]*api.ProcessInfo, hugeList)
	one := &api.ProcessInfo{Pid: 1}
	for i := range procs {
		procs[i] = one
	}
	return &api.ListProcessesResponse{Processes: procs}, nil
}

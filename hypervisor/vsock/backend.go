// Package vsock is the host end of a guest's virtio-vsock device when the
// kernel's vhost-vsock is missing: a vhost-user device backend that QEMU's
// vhost-user-vsock device drives over a unix socket, exposing guest vsock
// ports as hybrid-vsock unix sockets (Cloud Hypervisor's and Firecracker's
// scheme). It also opens the kernel's /dev/vhost-vsock when there is one.
//
// A Backend serves one VM:
//
//   - QEMU connects to Config.VhostUserSocket and sets the device up with
//     vhost-user messages; the guest's memory is mapped from the memfds QEMU
//     passes (it must run with memory-backend-memfd,share=on).
//   - A host process connects to Config.HybridSocket, writes "CONNECT <port>\n"
//     and reads "OK <host port>\n" once the guest accepted, after which the
//     unix connection is the guest stream. A refused or failed connection
//     gets "ERR <reason>\n" and is closed.
//   - A guest connection to host port P is forwarded to the unix socket
//     "<HybridSocket>_<P>" when something listens there, else refused (RST).
//
// Each stream has virtio-vsock's credit-based flow control both ways: the
// guest never sends more than the host has buffer for, and the host never
// reads more from a unix connection than the guest has room for, so a slow
// reader on either side stalls only its own stream.
package vsock

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Queue indexes of a virtio-vsock device.
const (
	rxQueue    = 0 // host → guest
	txQueue    = 1 // guest → host
	eventQueue = 2
	numQueues  = 3
)

// DefaultGuestCID is the guest's address when the configuration names none:
// every VM has its own backend, so all may use the first guest CID.
const DefaultGuestCID = 3

// Config describes one backend.
type Config struct {
	// VhostUserSocket is where QEMU's vhost-user chardev connects.
	VhostUserSocket string
	// HybridSocket is the host's hybrid-vsock socket; guest connections to
	// host port P go to HybridSocket_P.
	HybridSocket string
	// Frontend, when set, is an already-connected vhost-user session (one
	// end of a socket pair whose other end QEMU was started with), used
	// instead of listening on VhostUserSocket: an unprivileged QEMU then needs
	// no access to the backend's directory. The backend serves this one
	// session; it owns the connection from Listen on.
	Frontend *net.UnixConn
	// GuestCID is the guest's vsock address (GET_CONFIG); 0 means DefaultGuestCID.
	GuestCID uint64
	// MaxConnections caps the VM's streams, both directions together;
	// 0 means DefaultMaxConnections.
	MaxConnections int
	// Logf, if set, receives debug messages.
	Logf func(format string, args ...any)
}

// Backend is a running vhost-user-vsock device backend.
type Backend struct {
	cfg      Config
	vhostLn  *net.UnixListener
	hybridLn *net.UnixListener

	mu            sync.Mutex
	frontend      *net.UnixConn // the current QEMU session; nil between sessions
	features      uint64
	protoFeatures uint64
	mem           memory
	vqs           [numQueues]vring
	conns         map[connKey]*conn
	handshakes    map[*net.UnixConn]struct{} // hybrid clients before CONNECT resolves
	sendq         []*outPacket
	nextPort      uint32
	closed        bool
	err           error

	// What waits in sendq (see limits.go): RSTs, other control packets,
	// and data bytes with per-packet overhead and the reservations of
	// reads in progress.
	queuedResets  int
	queuedControl int
	pendingOut    int
	budgetWaiters map[*conn]struct{} // streams waiting for pendingOut to drop
	stats         Stats
	creditLog     rateLog // credit violations
	guestLog      rateLog // other guest misbehaviour

	wake      chan struct{}
	quit      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// Listen creates both sockets and serves them until Close. Nothing is left
// behind on error.
func Listen(cfg Config) (*Backend, error) {
	if (cfg.VhostUserSocket == "" && cfg.Frontend == nil) || cfg.HybridSocket == "" {
		return nil, errors.New("vsock backend: VhostUserSocket (or Frontend) and HybridSocket are required")
	}
	if cfg.GuestCID == 0 {
		cfg.GuestCID = DefaultGuestCID
	}
	if cfg.GuestCID <= HostCID || cfg.GuestCID >= 0xffffffff {
		return nil, fmt.Errorf("vsock backend: guest CID %d is reserved", cfg.GuestCID)
	}
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = DefaultMaxConnections
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	var vl *net.UnixListener
	if cfg.Frontend == nil {
		var err error
		if vl, err = net.ListenUnix("unix", &net.UnixAddr{Name: cfg.VhostUserSocket, Net: "unix"}); err != nil {
			return nil, fmt.Errorf("vsock backend: %w", err)
		}
	}
	hl, err := net.ListenUnix("unix", &net.UnixAddr{Name: cfg.HybridSocket, Net: "unix"})
	if err != nil {
		if vl != nil {
			vl.Close()
		}
		return nil, fmt.Errorf("vsock backend: %w", err)
	}
	b := newBackendState(cfg)
	b.vhostLn, b.hybridLn = vl, hl
	b.wg.Add(3)
	go b.serveFrontends()
	go b.serveHybrid()
	go b.worker()
	return b, nil
}

// newBackendState is a backend without its sockets or goroutines; cfg has
// its defaults filled in.
func newBackendState(cfg Config) *Backend {
	b := &Backend{
		cfg:           cfg,
		conns:         make(map[connKey]*conn),
		handshakes:    make(map[*net.UnixConn]struct{}),
		budgetWaiters: make(map[*conn]struct{}),
		nextPort:      firstHostPort,
		wake:          make(chan struct{}, 1),
		quit:          make(chan struct{}),
		done:          make(chan struct{}),
	}
	for i := range b.vqs {
		b.vqs[i] = newVring()
	}
	return b
}

// Done is closed when the backend has stopped: Close, or a fatal error.
func (b *Backend) Done() <-chan struct{} { return b.done }

// Err says why the backend stopped: nil after Close, else the failure.
func (b *Backend) Err() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// Close stops the backend: it closes both sockets (removing their files),
// the QEMU session and every stream, unmaps guest memory and waits for its
// goroutines. It is idempotent.
func (b *Backend) Close() error {
	b.shutdown(nil)
	<-b.done
	return nil
}

// shutdown stops everything without waiting, so it may run on one of the
// backend's own goroutines.
func (b *Backend) shutdown(err error) {
	b.closeOnce.Do(func() {
		b.mu.Lock()
		b.closed = true
		b.err = err
		if b.frontend != nil {
			b.frontend.Close()
		}
		for c := range b.handshakes {
			c.Close()
		}
		b.resetDevice()
		b.mu.Unlock()
		close(b.quit)
		if b.vhostLn != nil {
			b.vhostLn.Close()
		}
		if f := b.cfg.Frontend; f != nil {
			f.Close() // ends serveSession
		}
		b.hybridLn.Close()
		go func() {
			b.wg.Wait()
			close(b.done)
		}()
	})
}

// recoverPanic turns a bug on one of the backend's goroutines into a
// backend failure instead of a crash of the whole shim.
func (b *Backend) recoverPanic() {
	if r := recover(); r != nil {
		b.cfg.Logf("vsock backend: panic: %v", r)
		b.shutdown(fmt.Errorf("vsock backend internal error: %v", r))
	}
}

// kick wakes the queue worker.
func (b *Backend) kick() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// serveFrontends serves one QEMU at a time; when a session ends the device
// is reset and the next front-end may connect.
func (b *Backend) serveFrontends() {
	defer b.wg.Done()
	defer b.recoverPanic()
	if c := b.cfg.Frontend; c != nil {
		// One session: when it ends, QEMU is gone (or closed the device)
		// and nothing will reconnect; QEMU's own exit says why.
		b.mu.Lock()
		if !b.closed {
			b.frontend = c
		}
		b.mu.Unlock()
		err := b.serveSession(c)
		b.mu.Lock()
		b.frontend = nil
		b.resetDevice()
		closed := b.closed
		b.mu.Unlock()
		if !closed {
			b.cfg.Logf("vsock backend: vhost-user session ended: %v", err)
		}
		return
	}
	for {
		c, err := b.vhostLn.AcceptUnix()
		if err != nil {
			select {
			case <-b.quit:
			default:
				b.shutdown(fmt.Errorf("vsock backend: accepting vhost-user connections: %w", err))
			}
			return
		}
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			c.Close()
			return
		}
		b.frontend = c
		b.mu.Unlock()

		err = b.serveSession(c)
		b.mu.Lock()
		b.frontend = nil
		b.resetDevice()
		closed := b.closed
		b.mu.Unlock()
		c.Close()
		if !closed {
			b.cfg.Logf("vsock backend: vhost-user session ended: %v", err)
		}
	}
}

// worker moves packets between the virtqueues and the streams whenever the
// guest kicks or a stream has something to send.
func (b *Backend) worker() {
	defer b.wg.Done()
	defer b.recoverPanic()
	for {
		select {
		case <-b.quit:
			return
		case <-b.wake:
		}
		b.process()
	}
}

func (b *Backend) process() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	b.processTX()
	b.processRX()
}

// running reports whether the guest driver has both data queues going.
func (b *Backend) running() bool {
	return b.vqs[rxQueue].ready() && b.vqs[txQueue].ready()
}

// resetDevice forgets the device state of a session: rings, descriptors,
// guest memory, features, and every stream (whose host ends are closed).
func (b *Backend) resetDevice() {
	b.resetStreams()
	for i := range b.vqs {
		b.vqs[i].closeFDs()
		b.vqs[i] = newVring()
	}
	b.mem.unmap()
	b.features, b.protoFeatures = 0, 0
}

// eventFile is a kick eventfd watched by a goroutine that processes the queues.
type eventFile struct{ f *os.File }

func (b *Backend) watchKick(fd int, name string) *eventFile {
	unix.SetNonblock(fd, true)
	f := os.NewFile(uintptr(fd), name)
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		defer b.recoverPanic()
		var buf [8]byte
		for {
			if _, err := f.Read(buf[:]); err != nil {
				return
			}
			// Process on this goroutine rather than waking the worker:
			// one goroutine hop less per packet, which is most of an RPC's
			// round trip in the backend.
			b.process()
		}
	}()
	return &eventFile{f: f}
}

func (e *eventFile) Close() { e.f.Close() }

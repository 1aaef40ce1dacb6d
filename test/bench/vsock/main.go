// Command vsock compares the agent transports on the same guest image in
// one run: agent RPC round trips (Check), bulk agent RPCs (CopyFile), and
// raw vsock stream throughput each way through the guest's echo service
// (kasa.vsock_echo), over vhost-user-vsock beside virtio-serial.
//
//	go run ./test/bench/vsock [-n 500] [-mib 64]
//
// It needs root, QEMU and KASA_TEST_GUEST_DIR (make bench-vsock sets it).
// virtio-serial carries only the agent's ttrpc session, so it has no raw
// stream figures, and its CopyFile chunks stay at 4 KiB: larger messages
// stall on it (see test/integration's copyChunk).
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/agent/client"
	"github.com/kasa-runtime/kasa/hypervisor"
	"github.com/kasa-runtime/kasa/hypervisor/qemu"
)

const echoPort = 1025

func main() {
	n := flag.Int("n", 500, "Check round trips per transport")
	mib := flag.Int("mib", 64, "MiB per throughput measurement")
	flag.Parse()
	if err := run(*n, *mib); err != nil {
		fmt.Fprintln(os.Stderr, "bench-vsock:", err)
		os.Exit(1)
	}
}

type result struct {
	transport          hypervisor.AgentTransport
	boot               time.Duration
	p50, p90           time.Duration
	copy4K, copy512K   float64 // MiB/s host → guest through CopyFile
	streamUp, streamDn float64 // MiB/s raw vsock, host → guest and guest → host
}

func run(n, mib int) error {
	dir := os.Getenv("KASA_TEST_GUEST_DIR")
	if dir == "" {
		return fmt.Errorf("KASA_TEST_GUEST_DIR is not set (make bench-vsock sets it)")
	}
	ctx := context.Background()
	accel, _, err := qemu.ResolveAccelerator(ctx, hypervisor.AccelAuto, "/usr/bin/qemu-system-x86_64")
	if err != nil {
		return err
	}
	fmt.Printf("accelerator %s, q35, 1 vCPU, 512 MiB; %d Check calls, %d MiB per throughput figure\n\n", accel, n, mib)
	var results []result
	for _, tr := range []hypervisor.AgentTransport{hypervisor.TransportVhostUserVsock, hypervisor.TransportVirtioSerial} {
		r, err := measure(ctx, dir, accel, tr, n, mib)
		if err != nil {
			return fmt.Errorf("%s: %w", tr, err)
		}
		results = append(results, r)
	}
	fmt.Printf("%-17s %9s %11s %11s %15s %15s %14s %14s\n", "transport", "boot", "Check p50", "Check p90",
		"CopyFile 4K", "CopyFile 512K", "stream h→g", "stream g→h")
	for _, r := range results {
		fmt.Printf("%-17s %9s %11s %11s %15s %15s %14s %14s\n", r.transport,
			r.boot.Round(time.Millisecond), r.p50.Round(time.Microsecond), r.p90.Round(time.Microsecond),
			rate(r.copy4K), rate(r.copy512K), rate(r.streamUp), rate(r.streamDn))
	}
	fmt.Println("\nthroughput in MiB/s; n/a: the transport cannot carry it (see the command's doc)")
	return nil
}

func rate(v float64) string {
	if v == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.1f MiB/s", v)
}

func measure(ctx context.Context, dir string, accel hypervisor.Accelerator, tr hypervisor.AgentTransport, n, mib int) (result, error) {
	r := result{transport: tr}
	id := fmt.Sprintf("bench-vsock-%d", os.Getpid())
	cfg := hypervisor.VMConfig{
		ID: id, StateDir: filepath.Join("/run/kasa/vm", id),
		Path: "/usr/bin/qemu-system-x86_64", Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initrd.img"),
		MachineType: qemu.MachineQ35, VCPUs: 1, MemoryMiB: 512, Accelerator: accel,
		AgentTransport: tr, KernelParams: []string{fmt.Sprintf("kasa.vsock_echo=%d", echoPort)},
	}
	q := qemu.New()
	if err := q.CreateVM(ctx, cfg); err != nil {
		return r, err
	}
	start := time.Now()
	if err := q.StartVM(ctx); err != nil {
		return r, err
	}
	defer q.StopVM(ctx)
	dctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	c, err := client.Connect(dctx, func(ctx context.Context) (net.Conn, error) { return q.DialGuest(ctx, api.AgentVsockPort) })
	if err == nil {
		err = c.Check(dctx)
	}
	if err != nil {
		return r, err
	}
	defer c.Close()
	r.boot = time.Since(start)

	lat := make([]time.Duration, n)
	for i := range lat {
		t0 := time.Now()
		if err := c.Check(ctx); err != nil {
			return r, err
		}
		lat[i] = time.Since(t0)
	}
	slices.Sort(lat)
	r.p50, r.p90 = lat[n/2], lat[n*9/10]

	if r.copy4K, err = copyRate(ctx, c, 4<<10, mib); err != nil {
		return r, err
	}
	if tr == hypervisor.TransportVirtioSerial {
		return r, nil
	}
	if r.copy512K, err = copyRate(ctx, c, 512<<10, mib); err != nil {
		return r, err
	}
	socket := qemu.PathsFor(cfg.StateDir).HybridVsock
	if r.streamUp, err = sinkRate(socket, mib); err != nil {
		return r, err
	}
	if r.streamDn, err = generateRate(socket, mib); err != nil {
		return r, err
	}
	return r, nil
}

// copyRate writes mib MiB to a guest file with CopyFile chunks of chunk bytes.
func copyRate(ctx context.Context, c *client.Client, chunk, mib int) (float64, error) {
	total := mib << 20
	data := make([]byte, chunk)
	rand.Read(data)
	start := time.Now()
	for off := 0; off < total; off += chunk {
		err := c.CopyFile(ctx, &api.CopyFileRequest{
			Path: "/run/kasa/bench/copy.bin", FileMode: unix.S_IFREG | 0o600, DirMode: 0o700,
			Offset: int64(off % (8 << 20)), Data: data, FileSize: 8 << 20,
		})
		if err != nil {
			return 0, err
		}
	}
	return float64(mib) / time.Since(start).Seconds(), nil
}

func connect(socket, mode string) (*net.UnixConn, error) {
	c, err := net.Dial("unix", socket)
	if err != nil {
		return nil, err
	}
	uc := c.(*net.UnixConn)
	fmt.Fprintf(uc, "CONNECT %d\n", echoPort)
	line, err := bufio.NewReaderSize(oneByte{uc}, 16).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "OK ") {
		uc.Close()
		return nil, fmt.Errorf("CONNECT %d: %q, %v", echoPort, line, err)
	}
	_, err = uc.Write([]byte(mode))
	return uc, err
}

type oneByte struct{ c net.Conn }

func (o oneByte) Read(p []byte) (int, error) { return o.c.Read(p[:1]) }

// sinkRate sends mib MiB to the guest's discarding sink, which counts
// them (hashing in the guest would measure TCG's speed at SHA-256).
func sinkRate(socket string, mib int) (float64, error) {
	c, err := connect(socket, "d")
	if err != nil {
		return 0, err
	}
	defer c.Close()
	buf := make([]byte, 1<<20)
	rand.Read(buf)
	start := time.Now()
	for i := 0; i < mib; i++ {
		if _, err := c.Write(buf); err != nil {
			return 0, err
		}
	}
	c.CloseWrite()
	reply, err := io.ReadAll(c)
	elapsed := time.Since(start)
	if err != nil {
		return 0, err
	}
	if len(reply) != 8 || binary.LittleEndian.Uint64(reply) != uint64(mib)<<20 {
		return 0, fmt.Errorf("sink counted %x, want %d bytes", reply, mib<<20)
	}
	return float64(mib) / elapsed.Seconds(), nil
}

// generateRate reads mib MiB from the guest's generator and checks them.
func generateRate(socket string, mib int) (float64, error) {
	c, err := connect(socket, "g")
	if err != nil {
		return 0, err
	}
	defer c.Close()
	count := uint64(mib) << 20
	start := time.Now()
	if _, err := c.Write(binary.LittleEndian.AppendUint64(nil, count)); err != nil {
		return 0, err
	}
	h := sha256.New()
	n, err := io.Copy(h, c)
	elapsed := time.Since(start)
	if err != nil || uint64(n) != count {
		return 0, fmt.Errorf("generator: %d of %d bytes: %v", n, count, err)
	}
	want := sha256.New()
	io.Copy(want, stream(count))
	if string(h.Sum(nil)) != string(want.Sum(nil)) {
		return 0, fmt.Errorf("generator checksum mismatch")
	}
	return float64(mib) / elapsed.Seconds(), nil
}

// stream is what the guest's generator sends for count (vsockecho.Stream,
// which is guest-only code): a 64 KiB block seeded by count, repeated.
func stream(count uint64) io.Reader {
	var seed [32]byte
	binary.LittleEndian.PutUint64(seed[:], count)
	block := make([]byte, 64<<10)
	mrand.NewChaCha8(seed).Read(block)
	var rs []io.Reader
	for n := uint64(0); n < count; n += uint64(len(block)) {
		rs = append(rs, bytes.NewReader(block))
	}
	return io.LimitReader(io.MultiReader(rs...), int64(count))
}

//go:build integration

package integration

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kasa-runtime/kasa/hypervisor"
	"github.com/kasa-runtime/kasa/hypervisor/qemu"
	"github.com/kasa-runtime/kasa/virtcontainers"
)

// echoPort is where the guest's vsock test service listens (kasa.vsock_echo).
const echoPort = 1025

// hybridDial opens a stream to guest port through the VM's hybrid vsock socket.
func hybridDial(t *testing.T, socket string, port int) *net.UnixConn {
	t.Helper()
	c, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	uc := c.(*net.UnixConn)
	uc.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(uc, "CONNECT %d\n", port)
	line, err := bufio.NewReaderSize(oneByteReader{uc}, 16).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "OK ") {
		uc.Close()
		t.Fatalf("CONNECT %d: %q, %v", port, line, err)
	}
	uc.SetDeadline(time.Time{})
	return uc
}

type oneByteReader struct{ c net.Conn }

func (o oneByteReader) Read(p []byte) (int, error) { return o.c.Read(p[:1]) }

// echoStats reads the echo service's counters.
func echoStats(t *testing.T, socket string) string {
	t.Helper()
	c := hybridDial(t, socket, echoPort)
	defer c.Close()
	c.Write([]byte{'t'})
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// echoStream sends size random bytes through the guest's echo service while
// reading them back, and compares checksums.
func echoStream(socket string, size int) error {
	c, err := net.Dial("unix", socket)
	if err != nil {
		return err
	}
	defer c.Close()
	uc := c.(*net.UnixConn)
	uc.SetDeadline(time.Now().Add(3 * time.Minute))
	fmt.Fprintf(uc, "CONNECT %d\n", echoPort)
	line, err := bufio.NewReaderSize(oneByteReader{uc}, 16).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "OK ") {
		return fmt.Errorf("CONNECT: %q, %v", line, err)
	}
	data := make([]byte, size)
	rand.Read(data)
	werr := make(chan error, 1)
	go func() {
		if _, err := uc.Write([]byte{'e'}); err != nil {
			werr <- err
			return
		}
		_, err := uc.Write(data)
		if err == nil {
			err = uc.CloseWrite()
		}
		werr <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, uc)
	if err != nil {
		return fmt.Errorf("reading the echo after %d bytes: %w", n, err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("writing: %w", err)
	}
	if n != int64(size) || [32]byte(h.Sum(nil)) != sha256.Sum256(data) {
		return fmt.Errorf("echo of %d bytes came back as %d bytes with another checksum", size, n)
	}
	return nil
}

// The default transport on a host without /dev/vhost-vsock carries the
// agent over vhost-user-vsock; a hundred concurrent streams of 1 MiB each
// way come back intact; a host client that vanishes mid-stream is seen by
// the guest as a closed stream while the backend keeps serving the others.
func TestVsockIntegrationStreams(t *testing.T) {
	cfg := testConfig(t)
	cfg.Hypervisor.KernelParams = fmt.Sprintf("kasa.vsock_echo=%d", echoPort)
	id := newID(t)
	ctx := context.Background()
	vm, err := virtcontainers.StartVM(ctx, id, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer assertNothingLeft(t, id)
	defer vm.Stop(ctx)
	if vm.Config.AgentTransport != hypervisor.TransportVhostUserVsock {
		t.Fatalf("default transport here is %s, want %s", vm.Config.AgentTransport, hypervisor.TransportVhostUserVsock)
	}
	socket := qemu.PathsFor(vm.Config.StateDir).HybridVsock

	const streams, size = 100, 1 << 20
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := 0; i < streams; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if err := echoStream(socket, size); err != nil {
				errs <- fmt.Errorf("stream %d: %w", i, err)
			}
		}(i)
	}
	// The agent answers while the streams run.
	if err := vm.Agent.Check(ctx); err != nil {
		t.Errorf("Check during the streams: %v", err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	elapsed := time.Since(start)
	t.Logf("%d streams × %d MiB each way in %v (%.1f MiB/s each way)", streams, size>>20, elapsed.Round(time.Millisecond),
		float64(streams*size>>20)/elapsed.Seconds())

	// A host client that goes away mid-stream, with data in flight both ways.
	before := echoStats(t, socket)
	c := hybridDial(t, socket, echoPort)
	c.Write([]byte{'e'})
	junk := make([]byte, 256<<10)
	rand.Read(junk)
	c.Write(junk)
	c.Close()
	deadline := time.Now().Add(20 * time.Second)
	var after string
	for {
		after = echoStats(t, socket) // itself a stream: open=1
		if strings.Contains(after, " open=1 ") && after != before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guest did not see the vanished client's stream end: before %q, after %q", before, after)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("echo service: before %q, after %q", before, after)
	if err := echoStream(socket, 64<<10); err != nil {
		t.Errorf("a stream after the disconnect: %v", err)
	}
	if err := vm.Agent.Check(ctx); err != nil {
		t.Errorf("Check after the disconnect: %v", err)
	}
	if err := vm.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}

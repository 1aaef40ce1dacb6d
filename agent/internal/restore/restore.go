// Package restore brings an agent restored from a VM template up to its
// own identity: it waits for the clone's own devices and reseeds the kernel's
// random number generator from the host.
package restore

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
	"unsafe"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/agent/api"
)

const (
	// pollInterval is how often a clone rescans the PCI bus after the
	// runtime's cue until its devices are there (the first scan finds them).
	pollInterval = 20 * time.Millisecond
	// seedBytes is how much host entropy the clone mixes in: 512 bits.
	seedBytes = 64

	// linux/random.h: _IOW('R', 0x03, int[2]) and _IO('R', 0x07).
	rndAddEntropy = 0x40085203
	rndReseedCRNG = 0x5207
)

// Variables for tests.
var (
	pciRescan = "/sys/bus/pci/rescan"
	hwrng     = "/dev/hwrng"
	random    = "/dev/random"
)

// IsTemplate reports whether the kernel command line marks a template boot.
func IsTemplate(cmdline string) bool {
	for _, f := range strings.Fields(cmdline) {
		if f == api.TemplateParam {
			return true
		}
	}
	return false
}

// AwaitClone announces on the console (stderr, as init) that the template
// may be saved and waits for the runtime's kick on the console (stdin, as
// init), which only a clone gets; then it rescans the PCI bus until ready
// reports the clone's devices. It returns once this VM is a clone, with its
// RNG reseeded.
func AwaitClone(ctx context.Context, console io.Reader, ready func() bool) error {
	// Printed raw, not through the logger: the runtime matches the line.
	fmt.Fprintln(os.Stderr, api.TemplateReadyLine)
	if err := awaitKick(ctx, console); err != nil {
		return err
	}
	for !ready() {
		if err := os.WriteFile(pciRescan, []byte("1"), 0); err != nil {
			return fmt.Errorf("rescanning the PCI bus for the clone's devices: %w", err)
		}
		if ready() {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollInterval):
		}
	}
	if err := Reseed(); err != nil {
		return err
	}
	log.G(ctx).Info("restored from a template: devices found, RNG reseeded")
	return nil
}

// maxKickLine bounds a console line AwaitClone reads.
const maxKickLine = 256

// awaitKick reads console lines until one is api.CloneKickLine. Other
// lines (a stray key press on a serial console) are skipped, and a line
// longer than maxKickLine is read in pieces, none of which matches.
func awaitKick(ctx context.Context, console io.Reader) error {
	done := make(chan error, 1)
	go func() {
		r := bufio.NewReaderSize(console, maxKickLine)
		midLine := false // the last piece was not a whole line
		for {
			line, err := r.ReadSlice('\n')
			if !midLine && strings.TrimRight(string(line), "\r\n") == api.CloneKickLine && err == nil {
				done <- nil
				return
			}
			midLine = err == bufio.ErrBufferFull
			if err != nil && err != bufio.ErrBufferFull {
				done <- fmt.Errorf("waiting for the runtime's kick on the console: %w", err)
				return
			}
		}
	}()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case err := <-done:
		return err
	}
}

// Reseed mixes host entropy from the virtio-rng device into the kernel's
// pool and forces a CRNG reseed, so that a clone's random numbers are its own
// and not its siblings' (they all share the template's CRNG state).
func Reseed() error {
	seed := make([]byte, seedBytes)
	f, err := os.Open(hwrng)
	if err != nil {
		return fmt.Errorf("reseeding the clone's RNG: %w", err)
	}
	_, err = io.ReadFull(f, seed)
	f.Close()
	if err != nil {
		return fmt.Errorf("reseeding the clone's RNG: reading %s: %w", hwrng, err)
	}
	r, err := os.OpenFile(random, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("reseeding the clone's RNG: %w", err)
	}
	defer r.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	req := make([]byte, 8+len(seed))
	*(*int32)(unsafe.Pointer(&req[0])) = int32(len(seed) * 8)
	*(*int32)(unsafe.Pointer(&req[4])) = int32(len(seed))
	copy(req[8:], seed)
	if err := ioctl(r.Fd(), rndAddEntropy, uintptr(unsafe.Pointer(&req[0]))); err != nil {
		return fmt.Errorf("reseeding the clone's RNG: RNDADDENTROPY: %w", err)
	}
	if err := ioctl(r.Fd(), rndReseedCRNG, 0); err != nil {
		return fmt.Errorf("reseeding the clone's RNG: RNDRESEEDCRNG: %w", err)
	}
	return nil
}

func ioctl(fd uintptr, req uint, arg uintptr) error {
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, uintptr(req), arg); e != 0 {
		return e
	}
	return nil
}

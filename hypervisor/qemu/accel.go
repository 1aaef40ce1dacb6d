package qemu

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kasa-runtime/kasa/hypervisor"
)

// kvmDevice is a variable so tests can point it at a missing or fake device.
var kvmDevice = "/dev/kvm"

const (
	// probeStartTimeout bounds QEMU's start-up until the probe guest shows
	// its first sign of life; on a loaded host QEMU may take a while.
	probeStartTimeout = 5 * time.Second
	// probeGuestTimeout bounds the guest's run from that first sign of life to
	// its exit. Under a working KVM it takes microseconds; a host whose KVM
	// cannot run a stock kernel (e.g. PVM) hangs here.
	probeGuestTimeout = 1 * time.Second
	// probeExitCode is what isa-debug-exit makes QEMU return when the guest
	// writes probeExitValue to its port: (value << 1) | 1.
	probeExitValue = 0x31
	probeExitCode  = probeExitValue<<1 | 1
)

// ResolveAccelerator turns want into kvm or tcg for qemuPath and says why.
//
// "kvm" and "tcg" are taken as given ("kvm" fails when /dev/kvm cannot be
// opened). "auto" (or "") chooses tcg when /dev/kvm cannot be opened, and
// otherwise boots a probe guest under KVM: a tiny firmware that goes from
// real mode through protected mode to long mode, as every kernel does, and
// then makes QEMU exit with a known code. Anything else (a hang, a QEMU
// error) means KVM is not usable and tcg is chosen. Opening /dev/kvm is not
// enough: some hosts (paravirtual KVM such as PVM) open it fine and then
// hang a stock guest. The probe's verdict is cached for the process per
// qemuPath; a probe cut short by ctx is not cached and returns ctx's error.
func ResolveAccelerator(ctx context.Context, want hypervisor.Accelerator, qemuPath string) (hypervisor.Accelerator, string, error) {
	switch want {
	case hypervisor.AccelTCG:
		return hypervisor.AccelTCG, "tcg requested by configuration", nil
	case hypervisor.AccelKVM:
		if err := openKVM(); err != nil {
			return "", "", fmt.Errorf("accelerator kvm requested but unusable: %w", err)
		}
		return hypervisor.AccelKVM, "kvm requested by configuration", nil
	case hypervisor.AccelAuto, "":
	default:
		return "", "", fmt.Errorf("Accelerator %q is not one of %s, %s, %s", want,
			hypervisor.AccelAuto, hypervisor.AccelKVM, hypervisor.AccelTCG)
	}
	if err := openKVM(); err != nil {
		return hypervisor.AccelTCG, err.Error(), nil
	}
	v, err := cachedProbe(ctx, qemuPath)
	if err != nil {
		return "", "", err
	}
	if v.ok {
		return hypervisor.AccelKVM, v.reason, nil
	}
	return hypervisor.AccelTCG, v.reason, nil
}

func openKVM() error {
	f, err := os.OpenFile(kvmDevice, os.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

// verdict is the outcome of one probe.
type verdict struct {
	ok     bool
	reason string
}

type probeEntry struct {
	mu   sync.Mutex // held while probing, so concurrent callers wait for one probe
	done bool
	v    verdict
}

var probes sync.Map // qemu path -> *probeEntry

func cachedProbe(ctx context.Context, qemuPath string) (verdict, error) {
	e, _ := probes.LoadOrStore(qemuPath, &probeEntry{})
	entry := e.(*probeEntry)
	entry.mu.Lock()
	defer entry.mu.Unlock()
	if entry.done {
		return entry.v, nil
	}
	v, err := diskCachedProbe(ctx, qemuPath, func() (verdict, error) {
		// -cpu host: what BuildArgs gives a KVM guest. Some broken KVMs
		// already fail here (PVM: QEMU aborts setting MSRs); others hang
		// the guest.
		v := runProbe(ctx, qemuPath, hypervisor.AccelKVM, "host")
		if err := ctx.Err(); err != nil {
			return verdict{}, fmt.Errorf("KVM probe interrupted: %w", err)
		}
		return v, nil
	})
	if err != nil {
		return verdict{}, err
	}
	entry.v, entry.done = v, true
	return v, nil
}

// probeStages are the bytes the probe firmware writes to the debugcon port
// as it goes, so a failure can say how far the guest got.
var probeStages = map[byte]string{'R': "real mode", 'P': "protected mode", 'L': "long mode"}

// runProbe boots the probe firmware under accel with the given -cpu model and
// reports whether it ran to completion. The tests prove the firmware right by
// running it under TCG.
func runProbe(ctx context.Context, qemuPath string, accel hypervisor.Accelerator, cpu string) verdict {
	start := time.Now()
	fail := func(format string, a ...any) verdict {
		return verdict{reason: fmt.Sprintf("%s probe failed after %v: %s", accel, time.Since(start).Round(time.Millisecond), fmt.Sprintf(format, a...))}
	}

	// QEMU runs inside a scratch directory that is removed afterwards, so
	// not even a core dump of a crashing QEMU is left behind.
	dir, err := os.MkdirTemp("", "kasa-accel-probe-")
	if err != nil {
		return fail("%v", err)
	}
	defer os.RemoveAll(dir)
	rom := filepath.Join(dir, "probe.rom")
	if err := os.WriteFile(rom, probeFirmware(), 0o600); err != nil {
		return fail("writing firmware: %v", err)
	}

	cmd := exec.Command(qemuPath,
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-machine", "pc", "-accel", string(accel), "-cpu", cpu, "-m", "16",
		"-bios", rom,
		"-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
		"-debugcon", "stdio",
	)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &limitedWriter{w: &stderr, n: 4096}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return fail("%v", err)
	}
	// The probe must never outlive us.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fail("%v", err)
	}

	// The firmware's stage bytes arrive on stdout; EOF means QEMU is exiting.
	stages := make(chan byte, 16)
	go func() {
		defer close(stages)
		b := make([]byte, 16)
		for {
			n, err := stdout.Read(b)
			for _, c := range b[:n] {
				stages <- c
			}
			if err != nil {
				return
			}
		}
	}()
	kill := func() {
		_ = cmd.Process.Kill()
		for range stages {
		}
		_ = cmd.Wait()
	}

	var seen []byte
	stageText := func() string {
		if len(seen) == 0 {
			return "the guest never ran"
		}
		last := seen[len(seen)-1]
		if name, ok := probeStages[last]; ok {
			return "the guest last reached " + name
		}
		return fmt.Sprintf("the guest wrote %q", seen)
	}
	timer := time.NewTimer(probeStartTimeout)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			kill()
			return fail("%v", ctx.Err())
		case <-timer.C:
			kill()
			if len(seen) == 0 {
				return fail("QEMU showed no sign of the guest within %v", probeStartTimeout)
			}
			return fail("%s and then hung for %v", stageText(), probeGuestTimeout)
		case c, open := <-stages:
			if open {
				if len(seen) == 0 {
					// QEMU is up and the vCPU runs: from here on only the
					// guest's speed counts.
					timer.Reset(probeGuestTimeout)
				}
				seen = append(seen, c)
				continue
			}
			err := cmd.Wait()
			var exitErr *exec.ExitError
			if errors.As(err, &exitErr) && exitErr.ExitCode() == probeExitCode && string(seen) == "RPL" {
				return verdict{ok: true, reason: fmt.Sprintf("%s probe guest reached long mode in %v", accel, time.Since(start).Round(time.Millisecond))}
			}
			msg := strings.TrimSpace(stderr.String())
			if msg == "" {
				msg = "nothing"
			}
			return fail("QEMU exited (%v) before the guest finished; %s; QEMU said: %s", err, stageText(), msg)
		}
	}
}

// limitedWriter keeps the first n bytes and discards the rest.
type limitedWriter struct {
	w io.Writer
	n int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		l.n -= k
		if _, err := l.w.Write(p[:k]); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// Probe firmware layout: a 64 KiB BIOS image, which QEMU maps at the top of
// the 4 GiB space (the CPU starts at 0xFFFF_FFF0) and at 0xF0000.
const (
	probeROMSize  = 0x10000
	probeROMBase  = 0xF0000 // low alias; all absolute addresses below use it
	probeGDTOff   = 0x98
	probeGDTROff  = 0xB8
	probeResetOff = 0xFFF0
)

// probeCode is at offset 0 of the image. It writes 'R', 'P', 'L' to port
// 0xe9 (QEMU's debugcon) on reaching real, protected and long mode, then
// writes probeExitValue to isa-debug-exit at 0xf4. Assembled with GNU as
// (linked at 0xF0000); offsets on the right.
var probeCode = []byte{
	// real mode (CS base 0xFFFF0000 after reset)
	0xfa,       // 00: cli
	0xb0, 0x52, // 01: mov $'R',%al
	0xe6, 0xe9, // 03: out %al,$0xe9
	0x2e, 0x66, 0x0f, 0x01, 0x16, 0xb8, 0x00, // 05: lgdtl %cs:0xb8
	0x0f, 0x20, 0xc0, // 0c: mov %cr0,%eax
	0x66, 0x83, 0xc8, 0x01, // 0f: or $0x1,%eax  (PE)
	0x0f, 0x22, 0xc0, // 13: mov %eax,%cr0
	0x66, 0xea, 0x1e, 0x00, 0x0f, 0x00, 0x08, 0x00, // 16: ljmpl $0x8,$0xf001e
	// 32-bit protected mode
	0x66, 0xb8, 0x10, 0x00, // 1e: mov $0x10,%ax
	0x8e, 0xd8, // 22: mov %eax,%ds
	0x8e, 0xc0, // 24: mov %eax,%es
	0x8e, 0xd0, // 26: mov %eax,%ss
	0xb0, 0x50, // 28: mov $'P',%al
	0xe6, 0xe9, // 2a: out %al,$0xe9
	// identity-map the first 2 MiB: PML4 at 0x1000, PDPT 0x2000, PD 0x3000
	0xbf, 0x00, 0x10, 0x00, 0x00, // 2c: mov $0x1000,%edi
	0x31, 0xc0, // 31: xor %eax,%eax
	0xb9, 0x00, 0x0c, 0x00, 0x00, // 33: mov $0xc00,%ecx
	0xf3, 0xab, // 38: rep stos %eax,%es:(%edi)
	0xc7, 0x05, 0x00, 0x10, 0x00, 0x00, 0x03, 0x20, 0x00, 0x00, // 3a: movl $0x2003,0x1000
	0xc7, 0x05, 0x00, 0x20, 0x00, 0x00, 0x03, 0x30, 0x00, 0x00, // 44: movl $0x3003,0x2000
	0xc7, 0x05, 0x00, 0x30, 0x00, 0x00, 0x83, 0x00, 0x00, 0x00, // 4e: movl $0x83,0x3000 (2 MiB page)
	0x0f, 0x20, 0xe0, // 58: mov %cr4,%eax
	0x83, 0xc8, 0x20, // 5b: or $0x20,%eax  (PAE)
	0x0f, 0x22, 0xe0, // 5e: mov %eax,%cr4
	0xb8, 0x00, 0x10, 0x00, 0x00, // 61: mov $0x1000,%eax
	0x0f, 0x22, 0xd8, // 66: mov %eax,%cr3
	0xb9, 0x80, 0x00, 0x00, 0xc0, // 69: mov $0xc0000080,%ecx  (EFER)
	0x0f, 0x32, // 6e: rdmsr
	0x0d, 0x00, 0x01, 0x00, 0x00, // 70: or $0x100,%eax  (LME)
	0x0f, 0x30, // 75: wrmsr
	0x0f, 0x20, 0xc0, // 77: mov %cr0,%eax
	0x0d, 0x00, 0x00, 0x00, 0x80, // 7a: or $0x80000000,%eax  (PG)
	0x0f, 0x22, 0xc0, // 7f: mov %eax,%cr0
	0xea, 0x89, 0x00, 0x0f, 0x00, 0x18, 0x00, // 82: ljmp $0x18,$0xf0089
	// 64-bit long mode
	0xb0, 0x4c, // 89: mov $'L',%al
	0xe6, 0xe9, // 8b: out %al,$0xe9
	0xb0, probeExitValue, // 8d: mov $0x31,%al
	0xe6, 0xf4, // 8f: out %al,$0xf4  (isa-debug-exit)
	0xf4,       // 91: hlt
	0xeb, 0xfd, // 92: jmp 0x91
}

// probeGDT: null, 0x08 flat 32-bit code, 0x10 flat data, 0x18 64-bit code.
var probeGDT = []uint64{0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF, 0x00AF9A000000FFFF}

// probeFirmware assembles the 64 KiB probe image.
func probeFirmware() []byte {
	img := bytes.Repeat([]byte{0xf4}, probeROMSize) // hlt everywhere else
	copy(img, probeCode)
	for i, d := range probeGDT {
		binary.LittleEndian.PutUint64(img[probeGDTOff+8*i:], d)
	}
	binary.LittleEndian.PutUint16(img[probeGDTROff:], uint16(8*len(probeGDT)-1))
	binary.LittleEndian.PutUint32(img[probeGDTROff+2:], probeROMBase+probeGDTOff)
	// Reset vector: jmp rel16 to offset 0 of the same 64 KiB segment.
	img[probeResetOff] = 0xe9
	binary.LittleEndian.PutUint16(img[probeResetOff+1:], uint16(0x10000-(probeResetOff+3)))
	return img
}

package qemu

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// ProbeCacheDir keeps the KVM probe's verdict for the whole host, so that
// it is paid once, not once per shim (per pod): on a host whose /dev/kvm
// opens but hangs a guest the probe costs over a second. It is on /run, so
// a reboot (a new kernel, new modules) probes again.
var ProbeCacheDir = "/run/kasa/accel"

// probeRecord is one cached verdict and what it was computed for.
type probeRecord struct {
	Key    string `json:"key"`
	OK     bool   `json:"ok"`
	Reason string `json:"reason"`
}

// probeKey names everything the verdict depends on: the QEMU binary (path,
// size, mtime, inode), the host kernel (release and build), and the KVM
// device (device number, inode, change time: a module reload makes a new
// node). Any change gives a new key, and a new probe.
func probeKey(qemuPath string) (string, error) {
	var q, k unix.Stat_t
	if err := unix.Stat(qemuPath, &q); err != nil {
		return "", err
	}
	if err := unix.Stat(kvmDevice, &k); err != nil {
		return "", err
	}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return "", err
	}
	return fmt.Sprintf("qemu=%s size=%d mtime=%d.%d ino=%d kernel=%s %s kvm=%s rdev=%d ino=%d ctime=%d.%d",
		qemuPath, q.Size, q.Mtim.Sec, q.Mtim.Nsec, q.Ino,
		unix.ByteSliceToString(uts.Release[:]), unix.ByteSliceToString(uts.Version[:]),
		kvmDevice, k.Rdev, k.Ino, k.Ctim.Sec, k.Ctim.Nsec), nil
}

// diskCachedProbe returns the host-wide verdict for qemuPath, running probe
// only when none is recorded for the current key. A lock file makes a burst
// of shims wait for the first one's probe instead of each probing. Any
// trouble with the cache falls back to probing: it is an optimisation.
func diskCachedProbe(_ context.Context, qemuPath string, probe func() (verdict, error)) (verdict, error) {
	key, err := probeKey(qemuPath)
	if err != nil || os.MkdirAll(ProbeCacheDir, 0o700) != nil {
		return probe()
	}
	sum := sha256.Sum256([]byte(qemuPath))
	path := filepath.Join(ProbeCacheDir, hex.EncodeToString(sum[:8])+".json")
	lock, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return probe()
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return probe()
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN)

	if b, err := os.ReadFile(path); err == nil {
		var r probeRecord
		if json.Unmarshal(b, &r) == nil && r.Key == key && r.Reason != "" {
			return verdict{ok: r.OK, reason: r.Reason + " (cached for this host in " + path + ")"}, nil
		}
	}
	v, err := probe()
	if err != nil {
		return v, err
	}
	b, _ := json.Marshal(probeRecord{Key: key, OK: v.ok, Reason: v.reason})
	tmp := path + ".tmp"
	if os.WriteFile(tmp, b, 0o600) == nil {
		_ = os.Rename(tmp, path)
	}
	return v, nil
}

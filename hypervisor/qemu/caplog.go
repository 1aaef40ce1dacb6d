package qemu

import (
	"errors"
	"io"
	"os"
	"syscall"
)

// MaxLogBytes caps each of a VM's host-side logs (the guest console and
// QEMU's own output): the file holds at most this much, and one rotated copy
// (".1") the previous as much. The state directory is on /run, which is
// memory; a guest printing without end must not fill it.
var MaxLogBytes int64 = 1 << 20

// copyCapped copies r into path until r ends, keeping at most max bytes in
// path and rotating the full file to path.1 (replacing the older one).
// Write errors stop the writing but not the reading, so QEMU is never
// blocked on a log it cannot see.
func copyCapped(r io.Reader, path string, max int64) error {
	f, err := openLog(path)
	if err != nil {
		_, _ = io.Copy(io.Discard, r)
		return err
	}
	var written int64
	buf := make([]byte, 32<<10)
	var werr error
	for {
		n, rerr := r.Read(buf)
		p := buf[:n]
		for len(p) > 0 && werr == nil {
			room := max - written
			if room <= 0 {
				f.Close()
				if err := os.Rename(path, path+".1"); err != nil {
					werr = err
					break
				}
				if f, werr = openLog(path); werr != nil {
					break
				}
				written, room = 0, max
			}
			chunk := p[:min(int64(len(p)), room)]
			m, err := f.Write(chunk)
			written += int64(m)
			p = p[m:]
			werr = err
		}
		if rerr != nil {
			if f != nil {
				f.Close()
			}
			if errors.Is(rerr, io.EOF) || errors.Is(rerr, os.ErrClosed) {
				return werr
			}
			return errors.Join(werr, rerr)
		}
	}
}

func openLog(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC|syscall.O_CLOEXEC, 0o600)
}

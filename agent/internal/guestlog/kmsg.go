package guestlog

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"syscall"

	"github.com/kasa-runtime/kasa/agent/api"
)

// kmsgRecord is the largest record a read of /dev/kmsg returns (the
// kernel's is 1 KiB of text plus its prefix and dictionary).
const kmsgRecord = 8 << 10

// FollowKmsg reads the kernel's log from path (/dev/kmsg) from the start of
// its ring buffer on and queues records of level maxLevel and more severe.
// It returns only on an error other than a lost record.
func FollowKmsg(q *Queue, path string, maxLevel int) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, kmsgRecord)
	for {
		n, err := f.Read(buf)
		if err != nil {
			if errors.Is(err, syscall.EPIPE) {
				// Records were overwritten before we read them; the next
				// read continues with the oldest one left.
				q.Add(api.GuestLogKernel, api.LogWarning, "kernel log records lost (ring buffer overrun)")
				continue
			}
			return err
		}
		level, text, ok := ParseKmsg(buf[:n])
		if ok && level <= maxLevel {
			q.Add(api.GuestLogKernel, level, text)
		}
	}
}

// ParseKmsg splits one /dev/kmsg record, "prio,seq,usec,flags;text\n"
// followed by dictionary lines, into its level (prio & 7) and text.
func ParseKmsg(rec []byte) (level int, text string, ok bool) {
	head, rest, found := bytes.Cut(rec, []byte{';'})
	if !found {
		return 0, "", false
	}
	prio, _, _ := bytes.Cut(head, []byte{','})
	p, err := strconv.Atoi(string(prio))
	if err != nil || p < 0 {
		return 0, "", false
	}
	msg, _, _ := bytes.Cut(rest, []byte{'\n'})
	return p & 7, string(msg), true
}

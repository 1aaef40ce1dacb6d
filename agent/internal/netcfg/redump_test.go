package netcfg

import (
	"errors"
	"testing"

	"github.com/vishvananda/netlink"
)

// TestRedump: an interrupted dump is redone until it completes, at most
// dumpRetries times more; other errors are returned at once.
func TestRedump(t *testing.T) {
	calls := 0
	got, err := redump(func() (int, error) {
		calls++
		if calls < 3 {
			return -1, netlink.ErrDumpInterrupted
		}
		return 42, nil
	})
	if got != 42 || err != nil || calls != 3 {
		t.Errorf("redump = %d, %v after %d calls; want 42, nil after 3", got, err, calls)
	}

	calls = 0
	_, err = redump(func() (int, error) { calls++; return 0, netlink.ErrDumpInterrupted })
	if !errors.Is(err, netlink.ErrDumpInterrupted) || calls != dumpRetries+1 {
		t.Errorf("always interrupted: %v after %d calls; want ErrDumpInterrupted after %d", err, calls, dumpRetries+1)
	}

	calls = 0
	other := errors.New("boom")
	if _, err = redump(func() (int, error) { calls++; return 0, other }); err != other || calls != 1 {
		t.Errorf("other error: %v after %d calls", err, calls)
	}
}

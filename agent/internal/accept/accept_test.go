package accept

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
)

// At most max streams are handled at once, the rest are refused, and
// Serve returns only after the running handlers once the listener closes.
func TestServeBoundsAndWaits(t *testing.T) {
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	entered, release, refused := make(chan struct{}, 2), make(chan struct{}), make(chan struct{}, 1)
	handled := false
	done := make(chan error, 1)
	go func() {
		done <- Serve(context.Background(), l, "test", 1, func(c net.Conn) {
			defer c.Close()
			entered <- struct{}{}
			<-release
			handled = true
		}, func(c net.Conn) { c.Close(); refused <- struct{}{} })
	}()
	first, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	<-entered
	second, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	<-refused
	l.Close()
	close(release)
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Errorf("Serve = %v, want the closed listener's error", err)
	}
	if !handled {
		t.Error("Serve returned before its running handler ended")
	}
}

// Package accept runs the agent's small stream services: accept, bound how
// many streams run at once, refuse the rest.
package accept

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"time"

	"github.com/containerd/log"
)

// retryAfter is the pause after an accept error that is not the listener's
// end (EMFILE and the like): the service must not end for them.
const retryAfter = 100 * time.Millisecond

// Serve accepts l's streams until l is closed and runs handle for each in a
// goroutine of its own, at most max at a time; a stream beyond that goes to
// refuse, which must close it. what names the service in the log. Serve
// waits for the running handlers before it returns.
func Serve(ctx context.Context, l net.Listener, what string, max int, handle, refuse func(net.Conn)) error {
	sem := make(chan struct{}, max)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) {
				return err
			}
			log.G(ctx).WithError(err).Warn(what + ": accept")
			time.Sleep(retryAfter)
			continue
		}
		select {
		case sem <- struct{}{}:
		default:
			refuse(c)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			handle(c)
		}()
	}
}

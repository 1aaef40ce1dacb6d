package pid1

import (
	"os"
	"os/signal"

	"golang.org/x/sys/unix"
)

// ReapOrphans collects every child that exits, so that processes orphaned
// into init do not linger as zombies.
func ReapOrphans() {
	ch := make(chan os.Signal, 16)
	signal.Notify(ch, unix.SIGCHLD)
	go func() {
		for range ch {
			for {
				var ws unix.WaitStatus
				pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
		}
	}()
}

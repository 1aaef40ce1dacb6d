// Command kasa-pause is the process of a pod's sandbox container: it holds
// the pod's namespaces, reaps the orphans of a shared PID namespace, and
// exits 0 on SIGINT or SIGTERM. The agent runs it in the guest; the test
// pause image carries it for runc. It imports only the standard library so
// that it starts fast under emulation.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "-v", "--version":
			fmt.Println("kasa-pause")
			return
		default:
			fmt.Fprintf(os.Stderr, "usage: %s (no arguments): hold the pod's namespaces until SIGINT or SIGTERM\n", os.Args[0])
			os.Exit(2)
		}
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}

package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"

	"github.com/containerd/console"
	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/virtcontainers"
)

// execConsole opens the debug console of sandbox idPrefix (its id or a
// unique prefix) on this terminal: a shell in the guest (agent/api/
// console.md). stdin need not be a terminal: piped input is sent as typed,
// and its end ends the shell's input.
func execConsole(idPrefix string, stdin *os.File, stdout, stderr io.Writer) int {
	id, err := virtcontainers.FindSandbox(idPrefix)
	if err != nil {
		fmt.Fprintf(stderr, "kasa exec: %v\n", err)
		return 1
	}
	sock := virtcontainers.DebugConsoleSocket(id)
	if _, err := os.Stat(sock); errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(stderr, "kasa exec: the debug console of sandbox %s is disabled: set debug_console_enabled = true in [agent.kata] of the runtime's configuration file, then recreate the pod\n", id)
		return 1
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		fmt.Fprintf(stderr, "kasa exec: sandbox %s: %v\n", id, err)
		return 1
	}
	conn := c.(*net.UnixConn)
	defer conn.Close()
	if _, err := conn.Write(api.ConsoleHeader()); err != nil {
		fmt.Fprintf(stderr, "kasa exec: sandbox %s: %v\n", id, err)
		return 1
	}

	if term, err := console.ConsoleFromFile(stdin); err == nil {
		if err := term.SetRaw(); err != nil {
			fmt.Fprintf(stderr, "kasa exec: raw terminal: %v\n", err)
			return 1
		}
		defer term.Reset()
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, unix.SIGWINCH)
		defer signal.Stop(winch)
		sendSize := func() {
			if ws, err := term.Size(); err == nil {
				api.WriteConsoleResize(conn, ws.Height, ws.Width)
			}
		}
		sendSize()
		go func() {
			for range winch {
				sendSize()
			}
		}()
	}

	go func() {
		buf := make([]byte, api.MaxConsoleFramePayload)
		for {
			n, err := stdin.Read(buf)
			if n > 0 {
				if werr := api.WriteConsoleData(conn, buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				conn.CloseWrite() // the shell reads the end of its input
				return
			}
		}
	}()
	if _, err := io.Copy(stdout, conn); err != nil {
		fmt.Fprintf(stderr, "\r\nkasa exec: %v\r\n", err)
		return 1
	}
	return 0
}

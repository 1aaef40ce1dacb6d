// Command rawinit is the trivial /init of the boot benchmark's baseline: it
// says one line on the console and resets the VM, nothing else.
package main

import (
	"os"

	"golang.org/x/sys/unix"
)

func main() {
	os.Stdout.WriteString("rawinit: up\n")
	unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	select {}
}

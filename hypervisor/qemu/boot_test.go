package qemu

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// newcEntry is one file of an initramfs.
type newcEntry struct {
	name string
	mode uint32
	data []byte
}

// writeNewc writes a "newc" cpio archive, the initramfs format.
func writeNewc(entries []newcEntry) []byte {
	var b bytes.Buffer
	pad := func() {
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
	}
	for i, e := range append(entries, newcEntry{name: "TRAILER!!!"}) {
		fmt.Fprintf(&b, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			i+1, e.mode, 0, 0, 1, 0, len(e.data), 0, 0, 0, 0, len(e.name)+1, 0)
		b.WriteString(e.name)
		b.WriteByte(0)
		pad()
		b.Write(e.data)
		pad()
	}
	return b.Bytes()
}

const testInit = `#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
echo "KASA-UPTIME $(/bin/busybox cat /proc/uptime)"
for p in /sys/class/virtio-ports/*; do
	echo "KASA-PORT $(/bin/busybox cat $p/name)"
	if [ "$(/bin/busybox cat $p/name)" = agent.0 ]; then port=/dev/${p##*/}; fi
done
echo "KASA-RNG $(/bin/busybox cat /sys/class/misc/hw_random/rng_current 2>&1)"
read -r line < $port
echo "$line pong" > $port
/bin/busybox %s -f
`

// testInitrd is busybox with an /init that reports what the guest sees and
// then ends the VM with cmd ("reboot" or "poweroff").
func testInitrd(t *testing.T, cmd string) string {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("this test needs /bin/busybox (busybox-static): %v", err)
		}
		t.Skipf("skipping: this test needs /bin/busybox (busybox-static): %v", err)
	}
	img := writeNewc([]newcEntry{
		{name: "bin", mode: 0o40755},
		{name: "bin/busybox", mode: 0o100755, data: bb},
		{name: "proc", mode: 0o40755},
		{name: "sys", mode: 0o40755},
		{name: "dev", mode: 0o40755},
		{name: "init", mode: 0o100755, data: []byte(fmt.Sprintf(testInit, cmd))},
	})
	path := filepath.Join(t.TempDir(), "initrd")
	if err := os.WriteFile(path, img, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// guestKernel is $KASA_TEST_KERNEL, else the newest kernel in
// guest-image/build-kernel.sh's cache; it skips (fails under CI=true) if
// there is none.
func guestKernel(t *testing.T) string {
	t.Helper()
	if k := os.Getenv("KASA_TEST_KERNEL"); k != "" {
		return k
	}
	var newest string
	var newestTime time.Time
	matches, _ := filepath.Glob("/var/cache/kasa/kernel/*/vmlinuz")
	for _, m := range matches {
		if st, err := os.Stat(m); err == nil && st.ModTime().After(newestTime) {
			newest, newestTime = m, st.ModTime()
		}
	}
	if newest == "" {
		msg := "this test needs a guest kernel: set KASA_TEST_KERNEL or run guest-image/build-kernel.sh"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip("skipping: " + msg)
	}
	return newest
}

// Boots the real guest kernel on every machine type with the driver's own
// command line: the guest must see the agent port and the rng, answer on
// the agent port, and its reboot or power-off must end QEMU cleanly.
func TestQEMUIntegrationKernelBoot(t *testing.T) {
	requireRoot(t)
	qemu := requireQEMU(t)
	kernel := guestKernel(t)
	t.Logf("kernel %s", kernel)
	for _, machine := range []string{MachinePC, MachineQ35, MachineMicroVM} {
		for _, end := range []string{"reboot", "poweroff"} {
			t.Run(machine+"/"+end, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
				defer cancel()
				cfg := vmConfig(t, qemu, machine)
				cfg.Kernel = kernel
				cfg.Initrd = testInitrd(t, end)
				cfg.MemoryMiB = 128
				q := New()
				if err := q.CreateVM(ctx, cfg); err != nil {
					t.Fatal(err)
				}
				start := time.Now()
				if err := q.StartVM(ctx); err != nil {
					t.Fatal(err)
				}
				defer q.StopVM(context.Background())

				// Ping-pong over the agent port: proves interrupts reach the
				// guest and data flows both ways.
				conn, err := net.Dial("unix", q.paths.Agent)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(60 * time.Second))
				if _, err := conn.Write([]byte("ping\n")); err != nil {
					t.Fatal(err)
				}
				reply, err := bufio.NewReader(conn).ReadString('\n')
				if reply != "ping pong\n" {
					t.Errorf("agent port replied %q, %v", reply, err)
				}

				select {
				case <-q.Done():
				case <-ctx.Done():
				}
				took := time.Since(start)
				console, _ := os.ReadFile(q.ConsolePath())
				var report []string
				for _, l := range strings.Split(string(console), "\n") {
					if strings.HasPrefix(l, "KASA-") {
						report = append(report, strings.TrimSpace(l))
					}
				}
				t.Logf("%s: QEMU ended after %v; guest says %q", machine, took.Round(time.Millisecond), report)
				select {
				case <-q.Done():
				default:
					t.Fatalf("the guest's %s did not end QEMU; console:\n%s", end, console)
				}
				if err := q.ExitError(); err != nil {
					t.Errorf("ExitError: %v", err)
				}
				if !bytes.Contains(console, []byte("KASA-PORT agent.0")) {
					t.Errorf("guest has no agent.0 port; console:\n%s", console)
				}
				if !bytes.Contains(console, []byte("KASA-RNG virtio_rng")) {
					t.Errorf("guest has no virtio rng; console:\n%s", console)
				}
			})
		}
	}
}

// bootTimeout is far above the ≈1.5 s a boot takes here.
var bootTimeout = 60 * time.Second

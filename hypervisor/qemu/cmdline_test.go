package qemu

import (
	"errors"
	"net"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/kasa-runtime/kasa/hypervisor"
)

func baseConfig() hypervisor.VMConfig {
	return hypervisor.VMConfig{
		ID:             "sb1",
		StateDir:       "/run/kasa/vm/sb1",
		Path:           "/usr/bin/qemu-system-x86_64",
		Kernel:         "/k/vmlinuz",
		Initrd:         "/k/initrd.img",
		MachineType:    MachineQ35,
		VCPUs:          1,
		MemoryMiB:      256,
		Accelerator:    hypervisor.AccelAuto,
		AgentTransport: hypervisor.TransportVirtioSerial,
	}
}

// The whole command line for the common case, so a change to it is a
// deliberate diff here.
func TestBuildArgsQ35TCG(t *testing.T) {
	got, err := BuildArgs(baseConfig(), hypervisor.AccelTCG, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"-name", "sandbox-sb1,debug-threads=on",
		"-nodefaults", "-no-user-config",
		"-display", "none",
		"-no-reboot",
		"-machine", "q35",
		"-accel", "tcg,thread=multi", "-cpu", "max",
		"-m", "256M", "-smp", "1",
		"-kernel", "/k/vmlinuz",
		"-initrd", "/k/initrd.img",
		"-append", "tsc=reliable no_timer_check rcupdate.rcu_expedited=1 i8042.direct=1 i8042.dumbkbd=1 " +
			"i8042.nopnp=1 i8042.noaux=1 noreplace-smp reboot=k cryptomgr.notests net.ifnames=0 " +
			"pci=lastbus=0 console=ttyS0 panic=1 quiet",
		"-chardev", "socket,id=console,fd=4",
		"-serial", "chardev:console",
		"-chardev", "socket,id=qmp,fd=3",
		"-mon", "chardev=qmp,mode=control",
		"-device", "virtio-serial-pci,id=serial0",
		"-chardev", "socket,id=agent,path=/run/kasa/vm/sb1/agent.sock,server=on,wait=off",
		"-device", "virtserialport,bus=serial0.0,chardev=agent,name=agent.0",
		"-object", "rng-random,id=rng0,filename=/dev/urandom",
		"-device", "virtio-rng-pci,rng=rng0",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("BuildArgs:\n got %q\nwant %q", got, want)
	}
}

// values returns every value that follows flag in args.
func values(args []string, flag string) []string {
	var out []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			out = append(out, args[i+1])
		}
	}
	return out
}

func params(t *testing.T, args []string) []string {
	t.Helper()
	a := values(args, "-append")
	if len(a) != 1 {
		t.Fatalf("want one -append, got %q", a)
	}
	return strings.Fields(a[0])
}

func TestBuildArgsVariants(t *testing.T) {
	for _, tc := range []struct {
		name   string
		modify func(*hypervisor.VMConfig)
		accel  hypervisor.Accelerator
		cid    uint32 // claimed on /dev/vhost-vsock
		check  func(t *testing.T, args []string)
	}{{
		name:   "pc with kvm",
		modify: func(c *hypervisor.VMConfig) { c.MachineType = MachinePC; c.VCPUs = 2; c.MemoryMiB = 2048 },
		accel:  hypervisor.AccelKVM,
		check: func(t *testing.T, args []string) {
			expectValues(t, args, "-machine", "pc")
			expectValues(t, args, "-accel", "kvm")
			expectValues(t, args, "-cpu", "host")
			expectValues(t, args, "-smp", "2")
			expectValues(t, args, "-m", "2048M")
			expectContains(t, values(args, "-device"), "virtio-serial-pci,id=serial0", "virtio-rng-pci,rng=rng0")
			expectContains(t, params(t, args), "reboot=k", "pci=lastbus=0", "acpi=noirq")
		},
	}, {
		name:   "microvm uses virtio-mmio and reboots by triple fault",
		modify: func(c *hypervisor.VMConfig) { c.MachineType = MachineMicroVM },
		accel:  hypervisor.AccelTCG,
		check: func(t *testing.T, args []string) {
			expectValues(t, args, "-machine", "microvm,rtc=on")
			expectValues(t, args, "-accel", "tcg,thread=multi")
			expectValues(t, args, "-cpu", "max")
			expectContains(t, values(args, "-device"), "virtio-serial-device,id=serial0", "virtio-rng-device,rng=rng0")
			expectAbsent(t, values(args, "-device"), "virtio-balloon-device,free-page-reporting=on")
			p := params(t, args)
			expectContains(t, p, "reboot=t", "console=ttyS0")
			expectAbsent(t, p, "reboot=k", "pci=lastbus=0", "acpi=off", "acpi=noirq")
		},
	}, {
		name: "guest root from an image: an NVDIMM, read-only and shared, above RAM",
		modify: func(c *hypervisor.VMConfig) {
			c.Initrd, c.Image, c.ImageSize = "", "/k/guest.img", 16<<20
		},
		accel: hypervisor.AccelTCG,
		check: func(t *testing.T, args []string) {
			expectValues(t, args, "-machine", "q35,nvdimm=on")
			expectValues(t, args, "-m", "256M,slots=1,maxmem=272M")
			expectContains(t, values(args, "-object"), "memory-backend-file,id=kasa-image,mem-path=/k/guest.img,size=16777216,share=on,readonly=on")
			expectContains(t, values(args, "-device"), "nvdimm,id=kasa-image0,memdev=kasa-image,unarmed=on")
			expectAbsent(t, args, "-initrd")
			p := params(t, args)
			expectContains(t, p, "root=/dev/pmem0", "rootfstype=ext4", "rootflags=dax", "ro", "rootwait", "init=/init")
			// The configured parameters still come last.
			if p[len(p)-1] != "quiet" {
				t.Errorf("parameters end with %q", p[len(p)-1])
			}
		},
	}, {
		name: "an unprivileged QEMU maps the image the driver opened",
		modify: func(c *hypervisor.VMConfig) {
			c.Initrd, c.Image, c.ImageSize = "", "/k/guest.img", 16<<20
			c.AgentTransport = hypervisor.TransportVhostUserVsock
			c.Confinement = hypervisor.Confinement{UID: 1000, GID: 1000}
		},
		accel: hypervisor.AccelTCG,
		check: func(t *testing.T, args []string) {
			// qmp 3, console 4, vhost-user-vsock 5, kernel 6, image 7.
			expectValues(t, args, "-kernel", "/proc/self/fd/6")
			expectContains(t, values(args, "-object"), "memory-backend-file,id=kasa-image,mem-path=/proc/self/fd/7,size=16777216,share=on,readonly=on")
		},
	}, {
		name:   "free page reporting on microvm",
		modify: func(c *hypervisor.VMConfig) { c.MachineType = MachineMicroVM; c.FreePageReporting = true },
		accel:  hypervisor.AccelTCG,
		check: func(t *testing.T, args []string) {
			expectContains(t, values(args, "-device"), "virtio-balloon-device,free-page-reporting=on")
		},
	}, {
		name: "virtio-9p shared directory",
		modify: func(c *hypervisor.VMConfig) {
			c.SharedFS = &hypervisor.SharedFS{Type: hypervisor.SharedFS9P, Tag: "kasa", HostPath: "/run/kasa/shared/a,b"}
		},
		accel: hypervisor.AccelTCG,
		check: func(t *testing.T, args []string) {
			expectValues(t, args, "-fsdev", "local,id=fs0,path=/run/kasa/shared/a,,b,security_model=none,multidevs=remap")
			expectContains(t, values(args, "-device"), "virtio-9p-pci,fsdev=fs0,mount_tag=kasa")
			expectAbsent(t, values(args, "-object"), "memory-backend-memfd,id=mem,size=256M,share=on")
		},
	}, {
		name: "virtio-fs on microvm shares guest memory with virtiofsd",
		modify: func(c *hypervisor.VMConfig) {
			c.MachineType = MachineMicroVM
			c.SharedFS = &hypervisor.SharedFS{Type: hypervisor.SharedFSVirtioFS, Tag: "kasa", SocketPath: "/run/kasa/vm/x/vfs.sock"}
		},
		accel: hypervisor.AccelTCG,
		check: func(t *testing.T, args []string) {
			expectContains(t, values(args, "-object"), "memory-backend-memfd,id=mem,size=256M,share=on")
			expectValues(t, args, "-numa", "node,memdev=mem")
			expectContains(t, values(args, "-device"), "vhost-user-fs-device,chardev=vfs,tag=kasa")
			expectContains(t, values(args, "-chardev"), "socket,id=vfs,path=/run/kasa/vm/x/vfs.sock")
		},
	}, {
		name:   "vhost-user-vsock: shared memory, the backend's socket, no virtio-serial",
		modify: func(c *hypervisor.VMConfig) { c.AgentTransport = hypervisor.TransportVhostUserVsock },
		accel:  hypervisor.AccelTCG,
		check: func(t *testing.T, args []string) {
			expectContains(t, values(args, "-object"), "memory-backend-memfd,id=mem,size=256M,share=on")
			expectValues(t, args, "-numa", "node,memdev=mem")
			expectContains(t, values(args, "-chardev"), "socket,id=vsock,fd=5")
			expectContains(t, values(args, "-device"), "vhost-user-vsock-pci,chardev=vsock")
			expectAbsent(t, values(args, "-device"), "virtio-serial-pci,id=serial0")
		},
	}, {
		name: "vhost-user-vsock with virtio-fs on microvm: one memory backend",
		modify: func(c *hypervisor.VMConfig) {
			c.MachineType = MachineMicroVM
			c.AgentTransport = hypervisor.TransportVhostUserVsock
			c.SharedFS = &hypervisor.SharedFS{Type: hypervisor.SharedFSVirtioFS, Tag: "kasa", SocketPath: "/run/kasa/vm/x/vfs.sock"}
		},
		accel: hypervisor.AccelTCG,
		check: func(t *testing.T, args []string) {
			expectValues(t, args, "-object", "rng-random,id=rng0,filename=/dev/urandom", "memory-backend-memfd,id=mem,size=256M,share=on")
			expectValues(t, args, "-numa", "node,memdev=mem")
			expectContains(t, values(args, "-device"), "vhost-user-vsock-device,chardev=vsock", "vhost-user-fs-device,chardev=vfs,tag=kasa")
		},
	}, {
		name: "kernel vhost-vsock on an inherited fd after the taps",
		modify: func(c *hypervisor.VMConfig) {
			mac, _ := net.ParseMAC("02:42:ac:11:00:02")
			c.NICs = []hypervisor.NIC{{TapFile: os.Stdin, MAC: mac}}
			c.AgentTransport = hypervisor.TransportVsock
		},
		accel: hypervisor.AccelTCG,
		cid:   7,
		check: func(t *testing.T, args []string) {
			expectContains(t, values(args, "-device"), "vhost-vsock-pci,id=vsock0,guest-cid=7,vhostfd=4")
			expectAbsent(t, values(args, "-object"), "memory-backend-memfd,id=mem,size=256M,share=on")
			expectAbsent(t, values(args, "-device"), "virtio-serial-pci,id=serial0")
		},
	}, {
		name: "virtio-net on inherited tap fds",
		modify: func(c *hypervisor.VMConfig) {
			mac, _ := net.ParseMAC("02:42:ac:11:00:02")
			c.NICs = []hypervisor.NIC{{TapFile: os.Stdin, MAC: mac}, {TapFile: os.Stdin, MAC: mac}}
		},
		accel: hypervisor.AccelTCG,
		check: func(t *testing.T, args []string) {
			expectContains(t, values(args, "-netdev"), "tap,id=net0,fd=3,vhost=off", "tap,id=net1,fd=4,vhost=off")
			expectContains(t, values(args, "-device"), "virtio-net-pci,netdev=net0,mac=02:42:ac:11:00:02,romfile=")
		},
	}, {
		name:   "debug replaces quiet",
		modify: func(c *hypervisor.VMConfig) { c.Debug = true },
		accel:  hypervisor.AccelTCG,
		check: func(t *testing.T, args []string) {
			p := params(t, args)
			expectContains(t, p, "debug")
			expectAbsent(t, p, "quiet")
		},
	}, {
		name:   "firmware",
		modify: func(c *hypervisor.VMConfig) { c.Firmware = "/usr/share/qemu/qboot.rom" },
		accel:  hypervisor.AccelTCG,
		check: func(t *testing.T, args []string) {
			expectValues(t, args, "-bios", "/usr/share/qemu/qboot.rom")
		},
	}, {
		name:  "no firmware keeps the machine's",
		accel: hypervisor.AccelTCG,
		check: func(t *testing.T, args []string) { expectValues(t, args, "-bios") },
	}, {
		name:   "no initrd",
		modify: func(c *hypervisor.VMConfig) { c.Initrd = "" },
		accel:  hypervisor.AccelTCG,
		check:  func(t *testing.T, args []string) { expectValues(t, args, "-initrd") },
	}, {
		name: "configured kernel params come last, in order",
		modify: func(c *hypervisor.VMConfig) {
			c.KernelParams = []string{"reboot=t", " ", "init=/sbin/kasa-agent", "agent.log=debug"}
		},
		accel: hypervisor.AccelTCG,
		check: func(t *testing.T, args []string) {
			p := params(t, args)
			want := []string{"quiet", "reboot=t", "init=/sbin/kasa-agent", "agent.log=debug"}
			if got := p[len(p)-len(want):]; !slices.Equal(got, want) {
				t.Errorf("tail of kernel params = %q, want %q", got, want)
			}
			if i, j := slices.Index(p, "reboot=k"), slices.Index(p, "reboot=t"); i < 0 || j < i {
				t.Errorf("configured reboot=t (%d) must follow the driver's reboot=k (%d)", j, i)
			}
		},
	}, {
		name:   "commas in paths are escaped in option lists only",
		modify: func(c *hypervisor.VMConfig) { c.StateDir = "/run/a,b"; c.ID = "x,y"; c.Kernel = "/k/a,b" },
		accel:  hypervisor.AccelTCG,
		check: func(t *testing.T, args []string) {
			expectValues(t, args, "-name", "sandbox-x,,y,debug-threads=on")
			expectContains(t, values(args, "-chardev"), "socket,id=agent,path=/run/a,,b/agent.sock,server=on,wait=off")
			expectValues(t, args, "-kernel", "/k/a,b")
		},
	}, {
		name: "confined: seccomp, kernel and initrd and every channel as inherited fds",
		modify: func(c *hypervisor.VMConfig) {
			c.AgentTransport = hypervisor.TransportVhostUserVsock
			c.NICs = []hypervisor.NIC{{TapFile: os.Stdin, MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}}}
			c.SharedFS = &hypervisor.SharedFS{Type: hypervisor.SharedFSVirtioFS, Tag: "kasa", SocketPath: "/x/v.sock", Conn: os.Stdin}
			c.Confinement = hypervisor.Confinement{UID: 1000, GID: 1000, Seccomp: "on,spawn=deny"}
		},
		accel: hypervisor.AccelTCG,
		check: func(t *testing.T, args []string) {
			// tap 3, qmp 4, console 5, vhost-user-vsock 6, virtiofsd 7, kernel 8, initrd 9
			expectValues(t, args, "-netdev", "tap,id=net0,fd=3,vhost=off")
			expectValues(t, args, "-chardev", "socket,id=console,fd=5", "socket,id=qmp,fd=4", "socket,id=vsock,fd=6", "socket,id=vfs,fd=7")
			expectValues(t, args, "-kernel", "/proc/self/fd/8")
			expectValues(t, args, "-initrd", "/proc/self/fd/9")
			expectValues(t, args, "-sandbox", "on,spawn=deny")
			for _, a := range args {
				if strings.Contains(a, "/run/kasa") || strings.Contains(a, "/x/v.sock") {
					t.Errorf("a confined QEMU opens no path of the host's state, got %q", a)
				}
			}
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := baseConfig()
			if tc.modify != nil {
				tc.modify(&cfg)
			}
			args, err := BuildArgs(cfg, tc.accel, tc.cid)
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, args)
		})
	}
}

func expectValues(t *testing.T, args []string, flag string, want ...string) {
	t.Helper()
	if got := values(args, flag); !slices.Equal(got, want) {
		t.Errorf("%s values = %q, want %q", flag, got, want)
	}
}

func expectContains(t *testing.T, got []string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("%q lacks %q", got, w)
		}
	}
}

func expectAbsent(t *testing.T, got []string, unwanted ...string) {
	t.Helper()
	for _, u := range unwanted {
		if slices.Contains(got, u) {
			t.Errorf("%q has %q", got, u)
		}
	}
}

func TestBuildArgsErrors(t *testing.T) {
	for _, tc := range []struct {
		name         string
		modify       func(*hypervisor.VMConfig)
		accel        hypervisor.Accelerator
		cid          uint32
		wantInError  []string
		notSupported bool
	}{
		{name: "empty kernel", modify: func(c *hypervisor.VMConfig) { c.Kernel = "" }, wantInError: []string{"Kernel"}},
		{name: "zero memory", modify: func(c *hypervisor.VMConfig) { c.MemoryMiB = 0 }, wantInError: []string{"MemoryMiB"}},
		{name: "zero vcpus", modify: func(c *hypervisor.VMConfig) { c.VCPUs = 0 }, wantInError: []string{"VCPUs"}},
		{name: "unknown machine", modify: func(c *hypervisor.VMConfig) { c.MachineType = "virt" }, wantInError: []string{"MachineType", `"virt"`, "q35"}},
		{name: "empty machine", modify: func(c *hypervisor.VMConfig) { c.MachineType = "" }, wantInError: []string{"MachineType"}},
		{name: "empty id", modify: func(c *hypervisor.VMConfig) { c.ID = "" }, wantInError: []string{"ID"}},
		{name: "relative state dir", modify: func(c *hypervisor.VMConfig) { c.StateDir = "run/x" }, wantInError: []string{"StateDir", "absolute"}},
		{name: "state dir too long for a socket", modify: func(c *hypervisor.VMConfig) { c.StateDir = "/" + strings.Repeat("d", 100) }, wantInError: []string{"StateDir", "too long"}},
		{name: "unknown transport", modify: func(c *hypervisor.VMConfig) { c.AgentTransport = "pigeon" }, wantInError: []string{"AgentTransport", "pigeon"}},
		{name: "vsock without a claimed CID", modify: func(c *hypervisor.VMConfig) { c.AgentTransport = hypervisor.TransportVsock }, wantInError: []string{"AgentTransport", "/dev/vhost-vsock", "guest CID"}},
		{name: "vsock with a reserved CID", modify: func(c *hypervisor.VMConfig) {
			c.AgentTransport = hypervisor.TransportVsock
		}, cid: 2, wantInError: []string{"guest CID", "not 2"}},
		{name: "unresolved accelerator", accel: hypervisor.AccelAuto, wantInError: []string{"auto"}},
		{name: "confinement with a uid but no gid", modify: func(c *hypervisor.VMConfig) {
			c.AgentTransport = hypervisor.TransportVhostUserVsock
			c.Confinement.UID = 1000
		}, wantInError: []string{"Confinement", "UID 1000"}},
		{name: "unprivileged QEMU serving 9p", modify: func(c *hypervisor.VMConfig) {
			c.AgentTransport = hypervisor.TransportVhostUserVsock
			c.Confinement = hypervisor.Confinement{UID: 1000, GID: 1000}
			c.SharedFS = &hypervisor.SharedFS{Type: hypervisor.SharedFS9P, Tag: "kasa", HostPath: "/s"}
		}, wantInError: []string{"virtio-9p", "needs root", "virtio-fs"}},
		{name: "unprivileged QEMU left to dial virtiofsd", modify: func(c *hypervisor.VMConfig) {
			c.AgentTransport = hypervisor.TransportVhostUserVsock
			c.Confinement = hypervisor.Confinement{UID: 1000, GID: 1000}
			c.SharedFS = &hypervisor.SharedFS{Type: hypervisor.SharedFSVirtioFS, Tag: "kasa", SocketPath: "/s.sock"}
		}, wantInError: []string{"SharedFS.Conn"}},
		{name: "unprivileged QEMU on virtio-serial", modify: func(c *hypervisor.VMConfig) {
			c.Confinement = hypervisor.Confinement{UID: 1000, GID: 1000}
		}, wantInError: []string{"virtio-serial", "unprivileged"}},
		{name: "image and initrd", modify: func(c *hypervisor.VMConfig) { c.Image, c.ImageSize = "/k/guest.img", 16<<20 }, wantInError: []string{"Image and Initrd"}},
		{name: "image on microvm", modify: func(c *hypervisor.VMConfig) {
			c.Initrd, c.Image, c.ImageSize, c.MachineType = "", "/k/guest.img", 16<<20, MachineMicroVM
		}, wantInError: []string{"Image", "microvm", "NVDIMM"}, notSupported: true},
		{name: "image of an odd size", modify: func(c *hypervisor.VMConfig) {
			c.Initrd, c.Image, c.ImageSize = "", "/k/guest.img", 16<<20+4096
		}, wantInError: []string{"/k/guest.img", "2 MiB"}},
		{name: "image of no size", modify: func(c *hypervisor.VMConfig) { c.Initrd, c.Image = "", "/k/guest.img" }, wantInError: []string{"/k/guest.img", "2 MiB"}},
		{name: "every problem at once", modify: func(c *hypervisor.VMConfig) { c.Kernel = ""; c.MemoryMiB = 0 }, wantInError: []string{"Kernel", "MemoryMiB"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := baseConfig()
			if tc.modify != nil {
				tc.modify(&cfg)
			}
			accel := tc.accel
			if accel == "" {
				accel = hypervisor.AccelTCG
			}
			args, err := BuildArgs(cfg, accel, tc.cid)
			if err == nil {
				t.Fatalf("BuildArgs succeeded: %q", args)
			}
			for _, w := range tc.wantInError {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if got := errors.Is(err, hypervisor.ErrNotSupported); got != tc.notSupported {
				t.Errorf("errors.Is(err, ErrNotSupported) = %v, want %v (err: %v)", got, tc.notSupported, err)
			}
		})
	}
}

func TestWithDefaultFirmware(t *testing.T) {
	yes := func(string) bool { return true }
	no := func(string) bool { return false }
	for _, tc := range []struct {
		machine, firmware string
		exists            func(string) bool
		want              string
	}{
		{MachinePC, "", yes, QbootPath},
		{MachinePC, "", no, ""},
		{MachinePC, "/my/bios.bin", yes, "/my/bios.bin"},
		{MachineQ35, "", yes, ""},
		{MachineMicroVM, "", yes, ""}, // microvm's own default is already qboot
	} {
		cfg := baseConfig()
		cfg.MachineType, cfg.Firmware = tc.machine, tc.firmware
		if got := withDefaultFirmware(cfg, tc.exists).Firmware; got != tc.want {
			t.Errorf("%s with firmware %q: got %q, want %q", tc.machine, tc.firmware, got, tc.want)
		}
	}
}

// DialGuest reaches each transport's guest through its own channel.
func TestChannelFor(t *testing.T) {
	paths := PathsFor("/run/kasa/vm/x")
	for _, tc := range []struct {
		transport hypervisor.AgentTransport
		want      guestChannel
	}{
		{hypervisor.TransportVirtioSerial, guestChannel{serial: "/run/kasa/vm/x/agent.sock"}},
		{hypervisor.TransportVhostUserVsock, guestChannel{hybrid: "/run/kasa/vm/x/vsock.sock"}},
		{hypervisor.TransportVsock, guestChannel{cid: 9}},
	} {
		cfg := hypervisor.VMConfig{StateDir: "/run/kasa/vm/x", AgentTransport: tc.transport}
		if got := channelFor(cfg, paths, 9); got != tc.want {
			t.Errorf("%s: channel = %+v, want %+v", tc.transport, got, tc.want)
		}
	}
}

func TestWithTSCRate(t *testing.T) {
	cfg := baseConfig()
	cfg.KernelParams = []string{"a=1"}
	got := withTSCRate(cfg, 2245780)
	if want := []string{"tsc_early_khz=2245780", "a=1"}; !slices.Equal(got.KernelParams, want) {
		t.Errorf("KernelParams = %q, want %q", got.KernelParams, want)
	}
	if !slices.Equal(cfg.KernelParams, []string{"a=1"}) {
		t.Errorf("the caller's KernelParams changed: %q", cfg.KernelParams)
	}
	if got := withTSCRate(cfg, 0); !slices.Equal(got.KernelParams, cfg.KernelParams) {
		t.Errorf("unknown rate changed KernelParams: %q", got.KernelParams)
	}
}

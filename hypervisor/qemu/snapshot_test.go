package qemu

import (
	"net"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/kasa-runtime/kasa/hypervisor"
)

// snapshotConfig is a rootless, vhost-user-vsock, virtio-fs sandbox with
// one NIC, as a template or a clone.
func snapshotConfig(role hypervisor.SnapshotRole) hypervisor.VMConfig {
	cfg := baseConfig()
	cfg.AgentTransport = hypervisor.TransportVhostUserVsock
	cfg.Confinement = hypervisor.Confinement{UID: 4000, GID: 4000}
	cfg.Snapshot = &hypervisor.Snapshot{Role: role, Memory: os.Stdin, State: os.Stdout}
	if role == hypervisor.SnapshotClone {
		cfg.SharedFS = &hypervisor.SharedFS{Type: hypervisor.SharedFSVirtioFS, Tag: "kasa", SocketPath: "/run/v.sock", Conn: os.Stderr}
		cfg.NICs = []hypervisor.NIC{{TapFile: os.Stdin, MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}}}
	}
	return cfg
}

// devices returns the -device values of args.
func devices(args []string) []string {
	var out []string
	for i, a := range args {
		if a == "-device" && i+1 < len(args) {
			out = append(out, args[i+1])
		}
	}
	return out
}

func TestBuildArgsTemplate(t *testing.T) {
	cfg := snapshotConfig(hypervisor.SnapshotTemplate)
	args, err := BuildArgs(cfg, hypervisor.AccelTCG, 0)
	if err != nil {
		t.Fatal(err)
	}
	fds := planFDs(cfg)
	// The template has no pod devices: its only descriptors are QMP, the
	// console, kernel, initrd, memory and state.
	if fds.vhostUserVsock != 0 || fds.virtioFS != 0 || len(fds.taps) != 0 {
		t.Errorf("template passes pod descriptors: %+v", fds)
	}
	want := []string{
		"virtio-rng-pci,rng=rng0,addr=2",
		"pcie-root-port,id=kasa-port3,bus=pcie.0,chassis=3,addr=3",
		"pcie-root-port,id=kasa-port4,bus=pcie.0,chassis=4,addr=4",
	}
	if got := devices(args); !reflect.DeepEqual(got, want) {
		t.Errorf("devices\n got %q\nwant %q", got, want)
	}
	mem := "memory-backend-file,id=mem,size=256M,mem-path=/proc/self/fd/" + strconv.Itoa(fds.snapMemory) + ",share=on"
	if !slices.Contains(args, mem) {
		t.Errorf("no %q in %q", mem, args)
	}
	if slices.Contains(args, "-incoming") {
		t.Error("a template waits for incoming state")
	}

	// Free page reporting puts the balloon in a slot of its own, which a
	// clone has too.
	cfg.FreePageReporting = true
	args, err = BuildArgs(cfg, hypervisor.AccelTCG, 0)
	if err != nil {
		t.Fatal(err)
	}
	balloon := "virtio-balloon-pci,free-page-reporting=on,addr=" + strconv.Itoa(slotBalloon)
	if !slices.Contains(devices(args), balloon) {
		t.Errorf("template with FreePageReporting: no %q in %q", balloon, devices(args))
	}
	clone := snapshotConfig(hypervisor.SnapshotClone)
	clone.FreePageReporting = true
	if args, err = BuildArgs(clone, hypervisor.AccelTCG, 0); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(devices(args), balloon) {
		t.Errorf("clone with FreePageReporting: no %q in %q", balloon, devices(args))
	}

	// So does the image: a clone maps the same file, which the migration
	// stream leaves out (it is shared).
	pmem := "nvdimm,id=kasa-image0,memdev=kasa-image,unarmed=on"
	for _, c := range []hypervisor.VMConfig{cfg, clone} {
		c.Initrd, c.Image, c.ImageSize = "", "/k/guest.img", 16<<20
		if args, err = BuildArgs(c, hypervisor.AccelTCG, 0); err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(devices(args), pmem) {
			t.Errorf("%s with an image: no %q in %q", c.Snapshot.Role, pmem, devices(args))
		}
		if fds := planFDs(c); fds.image == 0 || !slices.Contains(args, "memory-backend-file,id=kasa-image,mem-path=/proc/self/fd/"+strconv.Itoa(fds.image)+",size=16777216,share=on,readonly=on") {
			t.Errorf("%s with an image: not mapped from its descriptor (%+v): %q", c.Snapshot.Role, fds, args)
		}
	}
}

func TestBuildArgsClone(t *testing.T) {
	cfg := snapshotConfig(hypervisor.SnapshotClone)
	args, err := BuildArgs(cfg, hypervisor.AccelTCG, 0)
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(args, " ")
	for _, want := range []string{"-incoming defer", "share=on", "virtio-net-pci,netdev=net0,mac=02:00:00:00:00:01,romfile=,addr=5"} {
		if !strings.Contains(joined, want) {
			t.Errorf("clone lacks %q: %s", want, joined)
		}
	}
	// QEMU 7.2 loads no state with a vhost-user device: they come later.
	for _, bad := range []string{"vhost-user", "-initrd"} {
		if strings.Contains(joined, bad) {
			t.Errorf("clone command line has %q: %s", bad, joined)
		}
	}
	fds := planFDs(cfg)
	if fds.vhostUserVsock != 0 || fds.virtioFS != 0 {
		t.Errorf("clone inherits the vhost-user sockets: %+v", fds)
	}
	late := lateDevices(cfg, os.Stdout)
	if len(late) != 2 {
		t.Fatalf("late devices %+v", late)
	}
	if d := late[0].device; d["driver"] != "vhost-user-vsock-pci" || d["bus"] != "kasa-port3" {
		t.Errorf("vsock added as %v", d)
	}
	if d := late[1].device; d["driver"] != "vhost-user-fs-pci" || d["bus"] != "kasa-port4" || d["tag"] != "kasa" || late[1].file != os.Stderr {
		t.Errorf("virtio-fs added as %v", d)
	}
	cfg.MachineType = MachinePC
	if d := lateDevices(cfg, os.Stdout)[0].device; d["bus"] != "pci.0" || d["addr"] != "3" {
		t.Errorf("pc: vsock added as %v", d)
	}
}

func TestSnapshotRefused(t *testing.T) {
	for name, mutate := range map[string]func(*hypervisor.VMConfig){
		"microvm":  func(c *hypervisor.VMConfig) { c.MachineType = MachineMicroVM },
		"no state": func(c *hypervisor.VMConfig) { c.Snapshot.State = nil },
		"bad role": func(c *hypervisor.VMConfig) { c.Snapshot.Role = "twin" },
		"9 NICs":   func(c *hypervisor.VMConfig) { c.NICs = make([]hypervisor.NIC, 9) },
	} {
		cfg := snapshotConfig(hypervisor.SnapshotClone)
		mutate(&cfg)
		if _, err := BuildArgs(cfg, hypervisor.AccelTCG, 0); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

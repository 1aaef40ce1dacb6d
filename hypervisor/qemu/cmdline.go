// Package qemu runs one Kasa sandbox VM in QEMU: a pure command-line builder,
// a KVM usability probe, a small QMP client and the process lifecycle.
package qemu

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/kasa-runtime/kasa/hypervisor"
	"github.com/kasa-runtime/kasa/hypervisor/vsock"
)

// Machine types the builder knows.
const (
	MachinePC      = "pc"
	MachineQ35     = "q35"
	MachineMicroVM = "microvm"
)

// QbootPath is the minimal firmware CreateVM uses for the pc machine when the
// configuration names none: it boots a -kernel faster than SeaBIOS.
const QbootPath = "/usr/share/qemu/qboot.rom"

// File names inside a VM's state directory.
const (
	qmpSocketName   = "qmp.sock"
	consoleLogName  = "console.log"
	agentSocketName = "agent.sock"
	vhostUserName   = "vhost-vsock.sock"
	hybridVsockName = "vsock.sock"
	pidFileName     = "qemu.pid"
	qemuLogName     = "qemu.log"
)

// unixPathMax is sizeof(sockaddr_un.sun_path) minus the terminating NUL.
const unixPathMax = 107

// Paths are the files QEMU creates in a VM's state directory.
type Paths struct {
	// QMP is QEMU's control socket in a driver that dials it (tests); the
	// driver itself speaks QMP on an inherited socket pair.
	QMP string
	// Console is the guest's ttyS0 log, written by the driver from the
	// console socket it shares with QEMU, size-capped and rotated once
	// (Console + ".1").
	Console string
	// Agent is the host end of the agent's virtio-serial port.
	Agent string
	// VhostUserVsock is where QEMU's vhost-user-vsock device meets the
	// driver's in-process backend (hypervisor/vsock).
	VhostUserVsock string
	// HybridVsock is the host's end of the guest's vsock: CONNECT <port>.
	HybridVsock string
	// PIDFile lets a restarted shim find and reap an orphaned QEMU. The
	// driver writes it, not QEMU: a pid file the VMM could rewrite would let
	// it aim the reaper at any process.
	PIDFile string
	// Log receives QEMU's own stdout and stderr, capped like Console.
	Log string
}

// PathsFor returns the paths inside stateDir.
func PathsFor(stateDir string) Paths {
	return Paths{
		QMP:            filepath.Join(stateDir, qmpSocketName),
		Console:        filepath.Join(stateDir, consoleLogName),
		Agent:          filepath.Join(stateDir, agentSocketName),
		VhostUserVsock: filepath.Join(stateDir, vhostUserName),
		HybridVsock:    filepath.Join(stateDir, hybridVsockName),
		PIDFile:        filepath.Join(stateDir, pidFileName),
		Log:            filepath.Join(stateDir, qemuLogName),
	}
}

// kataKernelParams are Kata Containers' guest parameters: they skip slow
// hardware probing (TSC calibration checks, i8042 detection, PCI bus scans,
// crypto self-tests) that means nothing in a VM. The i8042 ones are no-ops on
// a kernel without the driver. "reboot=k" resets through the keyboard
// controller, which pc and q35 have; with -no-reboot that ends QEMU.
var kataKernelParams = []string{
	"tsc=reliable",
	"no_timer_check",
	"rcupdate.rcu_expedited=1",
	"i8042.direct=1",
	"i8042.dumbkbd=1",
	"i8042.nopnp=1",
	"i8042.noaux=1",
	"noreplace-smp",
	"reboot=k",
	"cryptomgr.notests",
	"net.ifnames=0",
	"pci=lastbus=0",
	"console=ttyS0",
	"panic=1",
}

// machineModel is what differs between machine types.
type machineModel struct {
	// machine is the -machine value.
	machine string
	// virtioSuffix selects the transport of virtio devices: "-pci" or, on
	// microvm, "-device" (virtio-mmio).
	virtioSuffix string
	// params rewrites the Kata parameter list for this machine.
	params func([]string) []string
}

var machineModels = map[string]machineModel{
	// pc routes PCI INTx through ACPI interrupt link devices (LNKA..D);
	// setting each one up costs the guest about 0.35 s under TCG (measured:
	// 1.74 s to /init with two virtio-pci devices, 1.04 s with acpi=noirq).
	// acpi=noirq takes the routing from the firmware-programmed interrupt
	// lines instead; ACPI itself (power-off, tables) stays on. q35 routes
	// through fixed GSIs and does not pay this.
	MachinePC: {machine: MachinePC, virtioSuffix: "-pci", params: func(p []string) []string {
		return append(p, "acpi=noirq")
	}},
	MachineQ35: {machine: MachineQ35, virtioSuffix: "-pci", params: keepParams},
	// microvm keeps QEMU's default acpi=on: Kasa's guest kernel has ACPI,
	// finds the virtio-mmio devices in the DSDT and can power off. (With
	// acpi=off QEMU would instead append virtio_mmio.device= parameters,
	// which a kernel without ACPI needs.) rtc=on: without an RTC the guest
	// spends about a second on its clock. pit and pic stay at QEMU's "auto"
	// (on under TCG) because without kvmclock the kernel calibrates its
	// timers against them. There is no keyboard controller to reset through,
	// so the guest reboots by triple fault (reboot=t), and there is no PCI.
	MachineMicroVM: {
		machine:      MachineMicroVM + ",rtc=on",
		virtioSuffix: "-device",
		params: func(p []string) []string {
			out := make([]string, 0, len(p))
			for _, s := range p {
				switch s {
				case "reboot=k":
					out = append(out, "reboot=t")
				case "pci=lastbus=0":
				default:
					out = append(out, s)
				}
			}
			return out
		},
	},
}

func keepParams(p []string) []string { return p }

// imageKernelParams boot the guest from Image: its NVDIMM is the root, ext4
// mounted read-only with DAX, and /init (the agent) is started from it;
// rootwait because the device is probed asynchronously.
var imageKernelParams = []string{"root=/dev/pmem0", "rootfstype=ext4", "rootflags=dax", "ro", "rootwait", "init=/init"}

// imageAlign is the granularity of an Image's size: the guest maps device
// memory with struct pages (which DAX needs) in 2 MiB subsections.
const imageAlign = 2 << 20

// machineTypes lists the known machine types for error messages.
func machineTypes() string { return "pc, q35, microvm" }

// KernelParams returns the guest kernel command line for cfg: Kasa's
// parameters for the machine type, then "quiet" or "debug", then
// cfg.KernelParams, so that the configuration has the last word.
func KernelParams(cfg hypervisor.VMConfig) ([]string, error) {
	model, ok := machineModels[cfg.MachineType]
	if !ok {
		return nil, fmt.Errorf("MachineType %q is not one of %s", cfg.MachineType, machineTypes())
	}
	params := model.params(append([]string(nil), kataKernelParams...))
	if cfg.Image != "" {
		params = append(params, imageKernelParams...)
	}
	if cfg.Debug {
		params = append(params, "debug")
	} else {
		params = append(params, "quiet")
	}
	for _, p := range cfg.KernelParams {
		if p = strings.TrimSpace(p); p != "" {
			params = append(params, p)
		}
	}
	return params, nil
}

// validate checks what BuildArgs needs; errors name the VMConfig field.
func validate(cfg hypervisor.VMConfig) error {
	var errs []error
	if cfg.ID == "" {
		errs = append(errs, errors.New("ID is empty"))
	}
	switch {
	case cfg.StateDir == "":
		errs = append(errs, errors.New("StateDir is empty"))
	case !filepath.IsAbs(cfg.StateDir):
		errs = append(errs, fmt.Errorf("StateDir %q is not an absolute path", cfg.StateDir))
	default:
		// Unix socket paths are limited to sun_path; QEMU would fail late.
		paths := PathsFor(cfg.StateDir)
		// The hybrid socket also names <path>_<port> for guest-initiated streams.
		for _, p := range []string{paths.QMP, paths.Agent, paths.VhostUserVsock, paths.HybridVsock + "_4294967295"} {
			if len(p) > unixPathMax {
				errs = append(errs, fmt.Errorf("StateDir %q is too long: socket path %q exceeds %d bytes", cfg.StateDir, p, unixPathMax))
				break
			}
		}
	}
	if cfg.Kernel == "" {
		errs = append(errs, errors.New("Kernel is empty"))
	}
	if cfg.Image != "" {
		switch {
		case cfg.Initrd != "":
			errs = append(errs, errors.New("Image and Initrd are both set: the guest's root is one or the other"))
		case cfg.MachineType == MachineMicroVM:
			errs = append(errs, fmt.Errorf("Image: MachineType %s has no ACPI NVDIMM support (use q35 or pc, or an Initrd): %w", cfg.MachineType, hypervisor.ErrNotSupported))
		case cfg.ImageSize <= 0 || cfg.ImageSize%imageAlign != 0:
			errs = append(errs, fmt.Errorf("Image %s: size %d bytes is not a positive multiple of 2 MiB (guest-image/mkimage.sh makes it so)", cfg.Image, cfg.ImageSize))
		}
	}
	if _, ok := machineModels[cfg.MachineType]; !ok {
		errs = append(errs, fmt.Errorf("MachineType %q is not one of %s", cfg.MachineType, machineTypes()))
	}
	if fs := cfg.SharedFS; fs != nil {
		switch {
		case fs.Tag == "":
			errs = append(errs, errors.New("SharedFS.Tag is empty"))
		case fs.Type == hypervisor.SharedFS9P && !filepath.IsAbs(fs.HostPath):
			errs = append(errs, fmt.Errorf("SharedFS.HostPath %q is not an absolute path", fs.HostPath))
		case fs.Type == hypervisor.SharedFSVirtioFS && !filepath.IsAbs(fs.SocketPath):
			errs = append(errs, fmt.Errorf("SharedFS.SocketPath %q is not an absolute path", fs.SocketPath))
		case fs.Type != hypervisor.SharedFS9P && fs.Type != hypervisor.SharedFSVirtioFS:
			errs = append(errs, fmt.Errorf("SharedFS.Type %q is not one of %s, %s", fs.Type, hypervisor.SharedFS9P, hypervisor.SharedFSVirtioFS))
		}
	}
	if err := validateSnapshot(cfg); err != nil {
		errs = append(errs, err)
	}
	if c := cfg.Confinement; (c.UID == 0) != (c.GID == 0) {
		errs = append(errs, fmt.Errorf("Confinement: UID %d and GID %d must both be set or both be 0", c.UID, c.GID))
	}
	if cfg.Confinement.Unprivileged() && cfg.AgentTransport == hypervisor.TransportVirtioSerial {
		errs = append(errs, fmt.Errorf("AgentTransport %s makes QEMU create its socket in the driver's state directory; an unprivileged QEMU needs %s or %s",
			cfg.AgentTransport, hypervisor.TransportVhostUserVsock, hypervisor.TransportVsock))
	}
	if fs := cfg.SharedFS; fs != nil && cfg.Confinement.Unprivileged() {
		switch {
		case fs.Type == hypervisor.SharedFS9P:
			errs = append(errs, fmt.Errorf("SharedFS.Type %s is served by QEMU itself, which then needs root to read and write the containers' files; an unprivileged QEMU needs %s", fs.Type, hypervisor.SharedFSVirtioFS))
		case fs.Type == hypervisor.SharedFSVirtioFS && fs.Conn == nil:
			errs = append(errs, errors.New("SharedFS.Conn is nil: an unprivileged QEMU is handed its connection to virtiofsd"))
		}
	}
	for i, n := range cfg.NICs {
		if n.TapFile == nil || len(n.MAC) != 6 {
			errs = append(errs, fmt.Errorf("NICs[%d]: needs an open tap file and a 6-byte MAC", i))
		}
	}
	if cfg.VCPUs == 0 {
		errs = append(errs, errors.New("VCPUs is 0"))
	}
	if cfg.MemoryMiB == 0 {
		errs = append(errs, errors.New("MemoryMiB is 0"))
	}
	switch cfg.AgentTransport {
	case hypervisor.TransportVirtioSerial, hypervisor.TransportVhostUserVsock, hypervisor.TransportVsock:
	default:
		errs = append(errs, fmt.Errorf("AgentTransport %q is not one of %s, %s, %s", cfg.AgentTransport,
			hypervisor.TransportVirtioSerial, hypervisor.TransportVsock, hypervisor.TransportVhostUserVsock))
	}
	return errors.Join(errs...)
}

// BuildArgs returns QEMU's arguments (without the binary) for cfg run with
// accel, which must already be resolved to kvm or tcg. vhostCID is the guest
// CID the driver claimed on /dev/vhost-vsock for a VM that needs it
// (needsVhostVsock), 0 otherwise. It is pure: it reads no files and uses
// cfg.Firmware as given (CreateVM fills in qboot for pc).
//
// Choices worth knowing:
//   - -nodefaults -no-user-config: no default NIC, VGA, floppy, CD-ROM,
//     monitor or config file; each saves boot time and attack surface.
//     -display none is enough for a headless VM (-nographic would only add
//     stdio defaults that -nodefaults removes).
//   - -no-reboot: a guest reboot makes QEMU exit. The guest powers off by
//     rebooting (reboot=k/t, and panic=1 after a panic), so a dying or
//     finished guest always ends the QEMU process and closes Done().
//   - -accel tcg,thread=multi: one host thread per vCPU. It is QEMU's default
//     for x86 on x86 anyway; stating it keeps behaviour independent of the
//     QEMU build. TCG uses -cpu max (every feature TCG emulates), KVM -cpu host.
//   - every channel to the host is an inherited descriptor (planFDs): QMP
//     and the console are socket pairs, the taps, vhost and vhost-user
//     devices and, for an unprivileged QEMU, the kernel and initrd are opened
//     by the driver. QEMU writes no file of its own: a QEMU that a guest took
//     over can neither fill the host's /run nor rewrite the pid file the
//     reaper trusts.
//   - Confinement.Seccomp becomes -sandbox: QEMU's own syscall filter.
func BuildArgs(cfg hypervisor.VMConfig, accel hypervisor.Accelerator, vhostCID uint32) ([]string, error) {
	if err := validate(cfg); err != nil {
		return nil, fmt.Errorf("invalid VM config: %w", err)
	}
	if needsVhostVsock(cfg) && vhostCID <= vsock.HostCID {
		return nil, fmt.Errorf("AgentTransport %q needs a guest CID above %d claimed on /dev/vhost-vsock, not %d", cfg.AgentTransport, vsock.HostCID, vhostCID)
	}
	model := machineModels[cfg.MachineType]
	paths := PathsFor(cfg.StateDir)

	args := []string{
		"-name", "sandbox-" + optValue(cfg.ID) + ",debug-threads=on",
		"-nodefaults", "-no-user-config",
		"-display", "none",
		"-no-reboot",
		"-machine", machineArg(cfg, model),
	}
	switch accel {
	case hypervisor.AccelKVM:
		args = append(args, "-accel", "kvm", "-cpu", "host")
	case hypervisor.AccelTCG:
		args = append(args, "-accel", "tcg,thread=multi", "-cpu", "max")
	default:
		return nil, fmt.Errorf("accelerator %q is not resolved to %s or %s", accel, hypervisor.AccelKVM, hypervisor.AccelTCG)
	}
	mem := strconv.FormatUint(uint64(cfg.MemoryMiB), 10) + "M"
	if cfg.Image != "" {
		// The image is a memory device (a DIMM slot): it sits in the address
		// space above RAM that maxmem reserves (and QEMU never allocates).
		mem += ",slots=1,maxmem=" + strconv.FormatUint(uint64(cfg.MemoryMiB)+uint64(cfg.ImageSize>>20), 10) + "M"
	}
	args = append(args,
		"-m", mem,
		"-smp", strconv.FormatUint(uint64(cfg.VCPUs), 10),
	)
	if cfg.Firmware != "" {
		args = append(args, "-bios", cfg.Firmware)
	}

	params, err := KernelParams(cfg)
	if err != nil {
		return nil, err
	}
	fds := planFDs(cfg)
	kernel, initrd := cfg.Kernel, cfg.Initrd
	if fds.kernel != 0 {
		// An unprivileged QEMU re-opens the driver's descriptors: the
		// directories on the way need not be open to it.
		kernel = procFD(fds.kernel)
	}
	if fds.initrd != 0 {
		initrd = procFD(fds.initrd)
	}
	args = append(args, "-kernel", kernel)
	// A clone's guest has booted already: its kernel stays on the command
	// line only because its option ROM is part of the template's machine,
	// and an initrd would just sit in QEMU's memory.
	if initrd != "" && (cfg.Snapshot == nil || cfg.Snapshot.Role != hypervisor.SnapshotClone) {
		args = append(args, "-initrd", initrd)
	}
	args = append(args, "-append", strings.Join(params, " "))

	args = append(args,
		// Guest ttyS0 and QMP, each on an inherited, already connected
		// socket: QEMU opens no path for them, and the driver caps the log.
		"-chardev", "socket,id=console,fd="+strconv.Itoa(fds.console),
		"-serial", "chardev:console",
		"-chardev", "socket,id=qmp,fd="+strconv.Itoa(fds.qmp),
		"-mon", "chardev=qmp,mode=control",
	)
	if c := cfg.Confinement.Seccomp; c != "" {
		args = append(args, "-sandbox", c)
	}
	if hasPodDevices(cfg) && !(isClone(cfg) && cfg.AgentTransport == hypervisor.TransportVhostUserVsock) {
		args = append(args, agentArgs(cfg, model, paths, fds, vhostCID)...)
	}
	args = append(args,
		// Entropy, so the guest's crng is ready without waiting for jitter
		// (and a clone's agent reseeds from it).
		"-object", "rng-random,id=rng0,filename=/dev/urandom",
		"-device", "virtio-rng"+model.virtioSuffix+",rng=rng0"+pciAddr(cfg, slotRNG),
	)
	if cfg.FreePageReporting {
		// The guest reports the blocks it frees; QEMU discards them
		// (a hole punched in a memfd or a template's file, MADV_DONTNEED
		// in anonymous RAM). The balloon itself is never inflated.
		args = append(args, "-device", "virtio-balloon"+model.virtioSuffix+",free-page-reporting=on"+pciAddr(cfg, slotBalloon))
	}
	if cfg.Image != "" {
		args = append(args, imageArgs(cfg, fds)...)
	}
	if cfg.Snapshot != nil {
		args = append(args, hotplugPortArgs(cfg)...)
		args = append(args, snapshotMemoryArgs(cfg, fds)...)
		args = append(args, incomingArgs(cfg)...)
	} else {
		args = append(args, sharedMemoryArgs(cfg)...)
	}
	if !hasPodDevices(cfg) {
		return args, nil
	}
	if !(isClone(cfg) && cfg.SharedFS != nil && cfg.SharedFS.Type == hypervisor.SharedFSVirtioFS) {
		args = append(args, sharedFSArgs(cfg, model, fds)...)
	}
	return append(args, nicArgs(cfg, model)...), nil
}

// imageArgs map the guest's root image into the guest as an NVDIMM (as Kata
// does): read-only, so no guest can change the file every VM shares (QEMU
// then wants unarmed=on, which tells the guest so), and shared, so every VM
// maps the host's page-cache pages of it, and a template's migration stream
// leaves it out with x-ignore-shared, like its RAM. A guest write is
// discarded. Not virtio-pmem: with it, a VM restored from a template hung
// at power-off (cold VMs did not); the one step there that differs is the
// pmem flush the kernel does at shutdown, which for virtio-pmem is a
// request to QEMU, while an NVDIMM's stays in the guest. The image carries
// the pfn info block (guest-image/pmemhdr) that lets the guest map an
// NVDIMM with DAX.
func imageArgs(cfg hypervisor.VMConfig, fds fdPlan) []string {
	path := optValue(cfg.Image)
	if fds.image != 0 {
		path = procFD(fds.image)
	}
	return []string{
		"-object", "memory-backend-file,id=kasa-image,mem-path=" + path + ",size=" + strconv.FormatInt(cfg.ImageSize, 10) + ",share=on,readonly=on",
		"-device", "nvdimm,id=kasa-image0,memdev=kasa-image,unarmed=on",
	}
}

// machineArg is the -machine value: an Image needs the machine's NVDIMM
// support (ACPI NFIT).
func machineArg(cfg hypervisor.VMConfig, model machineModel) string {
	if cfg.Image != "" {
		return model.machine + ",nvdimm=on"
	}
	return model.machine
}

// agentArgs gives the guest the agent's channel:
//   - virtio-serial: a port named agent.0 on a QEMU server socket;
//   - vhost-user-vsock: a virtio-vsock device whose backend is the driver's
//     own (hypervisor/vsock), listening on the socket QEMU connects to as a
//     client; the guest's RAM must be shareable (sharedMemoryArgs);
//   - vsock: the kernel's vhost-vsock on an inherited /dev/vhost-vsock fd.
func agentArgs(cfg hypervisor.VMConfig, model machineModel, paths Paths, fds fdPlan, vhostCID uint32) []string {
	switch cfg.AgentTransport {
	case hypervisor.TransportVhostUserVsock:
		return []string{
			"-chardev", "socket,id=vsock,fd=" + strconv.Itoa(fds.vhostUserVsock),
			"-device", "vhost-user-vsock" + model.virtioSuffix + ",chardev=vsock" + pciAddr(cfg, slotAgent),
		}
	case hypervisor.TransportVsock:
		return []string{
			"-device", "vhost-vsock" + model.virtioSuffix + ",id=vsock0,guest-cid=" + strconv.FormatUint(uint64(vhostCID), 10) +
				",vhostfd=" + strconv.Itoa(fds.vhostVsock) + pciAddr(cfg, slotAgent),
		}
	default:
		return []string{
			"-device", "virtio-serial" + model.virtioSuffix + ",id=serial0" + pciAddr(cfg, slotAgent),
			"-chardev", "socket,id=agent,path=" + optValue(paths.Agent) + ",server=on,wait=off",
			"-device", "virtserialport,bus=serial0.0,chardev=agent,name=agent.0",
		}
	}
}

// needsVhostVsock reports whether a VM built from cfg has a kernel
// vhost-vsock device, for which the driver claims a guest CID
// (claimVhostVsock) and passes the device after the taps (planFDs).
func needsVhostVsock(cfg hypervisor.VMConfig) bool {
	return cfg.AgentTransport == hypervisor.TransportVsock && hasPodDevices(cfg)
}

// fdPlan numbers the descriptors QEMU inherits. StartVM passes its files in
// exactly this order (extraFiles); 0 means "not passed".
type fdPlan struct {
	taps           []int
	vhostVsock     int // TransportVsock: /dev/vhost-vsock
	qmp            int // QMP socket pair
	console        int // console socket pair
	vhostUserVsock int // TransportVhostUserVsock: socket pair to the backend
	virtioFS       int // SharedFS.Conn: a connection to virtiofsd
	kernel, initrd int // unprivileged QEMU: opened by the driver
	image          int // unprivileged QEMU: Image, opened by the driver
	snapMemory     int // Snapshot.Memory
	snapState      int // Snapshot.State
}

func planFDs(cfg hypervisor.VMConfig) fdPlan {
	next := 3 // after stdin, stdout, stderr
	take := func() int { next++; return next - 1 }
	var p fdPlan
	for range cfg.NICs {
		p.taps = append(p.taps, take())
	}
	if needsVhostVsock(cfg) {
		p.vhostVsock = take()
	}
	p.qmp, p.console = take(), take()
	if cfg.AgentTransport == hypervisor.TransportVhostUserVsock && hasPodDevices(cfg) && !isClone(cfg) {
		p.vhostUserVsock = take()
	}
	if fs := cfg.SharedFS; fs != nil && fs.Type == hypervisor.SharedFSVirtioFS && fs.Conn != nil && !isClone(cfg) {
		p.virtioFS = take()
	}
	if cfg.Confinement.Unprivileged() {
		p.kernel = take()
		if cfg.Initrd != "" {
			p.initrd = take()
		}
		if cfg.Image != "" {
			p.image = take()
		}
	}
	if cfg.Snapshot != nil {
		p.snapMemory, p.snapState = take(), take()
	}
	return p
}

// procFD names inherited descriptor n as a path QEMU can open.
func procFD(n int) string { return "/proc/self/fd/" + strconv.Itoa(n) }

// needsSharedMemory reports whether a vhost-user backend maps guest RAM.
func needsSharedMemory(cfg hypervisor.VMConfig) bool {
	return cfg.AgentTransport == hypervisor.TransportVhostUserVsock ||
		(cfg.SharedFS != nil && cfg.SharedFS.Type == hypervisor.SharedFSVirtioFS)
}

// sharedMemoryArgs puts the guest's RAM in a memfd that vhost-user
// backends (virtiofsd, the vsock backend) can map.
func sharedMemoryArgs(cfg hypervisor.VMConfig) []string {
	if !needsSharedMemory(cfg) {
		return nil
	}
	mem := strconv.FormatUint(uint64(cfg.MemoryMiB), 10) + "M"
	return []string{
		"-object", "memory-backend-memfd,id=mem,size=" + mem + ",share=on",
		"-numa", "node,memdev=mem",
	}
}

// nicFD is the descriptor number of NIC i's tap in QEMU: the driver passes
// the taps first, as the child's extra files start at 3.
func nicFD(i int) int { return 3 + i }

// nicArgs gives the guest a virtio-net card per NIC on an inherited tap fd.
// romfile= keeps QEMU from loading a PXE option ROM the guest never uses.
func nicArgs(cfg hypervisor.VMConfig, model machineModel) []string {
	var args []string
	for i, n := range cfg.NICs {
		id := "net" + strconv.Itoa(i)
		dev := "virtio-net" + model.virtioSuffix + ",netdev=" + id + ",mac=" + n.MAC.String()
		if model.virtioSuffix == "-pci" {
			dev += ",romfile=" + pciAddr(cfg, slotNIC+i)
		}
		args = append(args,
			"-netdev", "tap,id="+id+",fd="+strconv.Itoa(nicFD(i))+",vhost=off",
			"-device", dev)
	}
	return args
}

// sharedFSArgs exports cfg.SharedFS. virtio-9p is served by QEMU itself
// (security_model=none: QEMU, running as root, keeps the files' owners;
// multidevs=remap keeps inode numbers unique across the mounts inside the
// directory). virtio-fs needs the guest's RAM in a shareable memfd so the
// external virtiofsd can map it (sharedMemoryArgs).
func sharedFSArgs(cfg hypervisor.VMConfig, model machineModel, fds fdPlan) []string {
	fs := cfg.SharedFS
	if fs == nil {
		return nil
	}
	switch fs.Type {
	case hypervisor.SharedFS9P:
		return []string{
			"-fsdev", "local,id=fs0,path=" + optValue(fs.HostPath) + ",security_model=none,multidevs=remap",
			"-device", "virtio-9p" + model.virtioSuffix + ",fsdev=fs0,mount_tag=" + optValue(fs.Tag) + pciAddr(cfg, slotFS),
		}
	case hypervisor.SharedFSVirtioFS:
		chardev := "socket,id=vfs,path=" + optValue(fs.SocketPath)
		if fds.virtioFS != 0 {
			chardev = "socket,id=vfs,fd=" + strconv.Itoa(fds.virtioFS)
		}
		return []string{
			"-chardev", chardev,
			"-device", "vhost-user-fs" + model.virtioSuffix + ",chardev=vfs,tag=" + optValue(fs.Tag) + pciAddr(cfg, slotFS),
		}
	}
	return nil
}

// AgentPort is the agent's vsock port (docs/architecture.md, "Contracts";
// agent/api.AgentVsockPort): the one port a virtio-serial channel carries.
const AgentPort = 1024

// optValue escapes a value inside a QEMU key=value option list, where a
// comma separates options and ",," is a literal comma.
func optValue(s string) string { return strings.ReplaceAll(s, ",", ",,") }

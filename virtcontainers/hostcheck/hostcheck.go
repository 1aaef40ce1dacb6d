// Package hostcheck probes whether this host can run Kasa sandboxes with a
// given configuration, and says how to fix what is missing.
package hostcheck

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/configuration"
	"github.com/kasa-runtime/kasa/hypervisor"
	"github.com/kasa-runtime/kasa/hypervisor/qemu"
	"github.com/kasa-runtime/kasa/hypervisor/vsock"
	"github.com/kasa-runtime/kasa/virtcontainers"
)

// Status is the outcome of one check.
type Status string

const (
	Pass Status = "ok"
	// Warn: works, but worse than it could (e.g. software emulation).
	Warn Status = "warn"
	Fail Status = "FAIL"
	// Info describes a choice the runtime made; never a failure.
	Info Status = "info"
)

// Result is one requirement and, when it fails, a one-line remedy.
type Result struct {
	Name   string
	Status Status
	Detail string
	Remedy string
}

// Run checks the host against cfg. It needs root for the network probe.
func Run(ctx context.Context, cfg *configuration.Config) []Result {
	var out []Result
	out = append(out, checkQEMU(ctx, cfg.Hypervisor.Path))
	out = append(out, checkFile("guest kernel", "hypervisor.qemu.kernel", cfg.Hypervisor.Kernel))
	if cfg.Hypervisor.Image != "" {
		out = append(out, checkFile("guest image (DAX)", "hypervisor.qemu.image", cfg.Hypervisor.Image))
	} else {
		out = append(out, checkFile("guest initrd", "hypervisor.qemu.initrd", cfg.Hypervisor.Initrd))
	}
	out = append(out, checkAccel(ctx, cfg), checkBootSlots(ctx, cfg))
	out = append(out, checkConfinement(ctx, cfg)...)
	out = append(out, checkVhostVsock(), checkTransport(ctx, cfg))
	out = append(out, checkCgroups())
	out = append(out, checkTapTC(ctx))
	out = append(out, checkPortForward(ctx, cfg))
	out = append(out, checkTemplate(cfg))
	return out
}

// Failed reports whether any requirement is unmet.
func Failed(rs []Result) bool {
	for _, r := range rs {
		if r.Status == Fail {
			return true
		}
	}
	return false
}

func checkQEMU(ctx context.Context, path string) Result {
	r := Result{Name: "qemu", Status: Fail}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "-version").Output()
	if err != nil {
		r.Detail = fmt.Sprintf("%s: %v", path, err)
		r.Remedy = "apt-get install qemu-system-x86, or set hypervisor.qemu.path to a QEMU binary"
		return r
	}
	r.Status = Pass
	r.Detail = fmt.Sprintf("%s: %s", path, strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0])
	return r
}

func checkFile(name, key, path string) Result {
	r := Result{Name: name, Status: Fail}
	fi, err := os.Stat(path)
	switch {
	case err != nil:
		r.Detail = err.Error()
		r.Remedy = fmt.Sprintf("run `make guest-image install`, or set %s to an existing file", key)
	case !fi.Mode().IsRegular() || fi.Size() == 0:
		r.Detail = path + ": not a non-empty regular file"
		r.Remedy = fmt.Sprintf("point %s at the guest image built by `make guest-image`", key)
	default:
		r.Status = Pass
		r.Detail = fmt.Sprintf("%s (%d bytes)", path, fi.Size())
	}
	return r
}

func checkAccel(ctx context.Context, cfg *configuration.Config) Result {
	r := Result{Name: "accelerator", Status: Fail}
	want := hypervisor.Accelerator(cfg.Hypervisor.Accelerator)
	got, reason, err := qemu.ResolveAccelerator(ctx, want, cfg.Hypervisor.Path)
	if err != nil {
		r.Detail = err.Error()
		r.Remedy = `set hypervisor.qemu.accelerator = "tcg" (software emulation) or "auto"`
		return r
	}
	r.Status = Pass
	r.Detail = fmt.Sprintf("%s (%s)", got, reason)
	if got == hypervisor.AccelTCG {
		r.Status = Warn
		r.Detail = "tcg: software emulation, boots are slower: " + strings.Join(strings.Fields(reason), " ")
	}
	return r
}

func checkVhostVsock() Result {
	r := Result{Name: "vhost-vsock", Status: Info}
	if err := vsock.VhostVsockUsable(virtcontainers.VhostVsockDevice); err != nil {
		r.Detail = fmt.Sprintf("kernel vhost-vsock unusable: %v (modprobe vhost_vsock where the kernel has it; Kasa's vhost-user-vsock needs nothing)", err)
		return r
	}
	r.Detail = virtcontainers.VhostVsockDevice + " usable"
	return r
}

// checkTransport says which agent channel a sandbox gets and why, and fails
// when that channel cannot work here.
func checkTransport(ctx context.Context, cfg *configuration.Config) Result {
	t, why := virtcontainers.SelectTransport(cfg.Agent.Transport)
	r := Result{Name: "agent transport", Status: Info, Detail: fmt.Sprintf("%s (%s)", t, why)}
	switch t {
	case hypervisor.TransportVsock:
		if err := vsock.VhostVsockUsable(virtcontainers.VhostVsockDevice); err != nil {
			r.Status = Fail
			r.Remedy = `modprobe vhost_vsock, or set agent.kata.transport = "auto" to use vhost-user-vsock`
		}
	case hypervisor.TransportVhostUserVsock:
		// The backend is Kasa's own; QEMU must have the device model.
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, cfg.Hypervisor.Path, "-device", "help").Output()
		if err == nil && !bytes.Contains(out, []byte(`"vhost-user-vsock-`)) {
			r.Status = Fail
			r.Detail += "; but " + cfg.Hypervisor.Path + " has no vhost-user-vsock device (QEMU 5.1 or newer needed)"
			r.Remedy = `use a newer QEMU, or set agent.kata.transport = "virtio-serial"`
		}
	}
	return r
}

func checkCgroups() Result {
	r := Result{Name: "host cgroups", Status: Info}
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/cgroup", &st); err != nil {
		r.Detail = err.Error()
		return r
	}
	switch st.Type {
	case unix.CGROUP2_SUPER_MAGIC:
		r.Detail = "v2 (unified)"
	default:
		r.Detail = "v1 (legacy or hybrid); the guest always uses v2"
	}
	return r
}

// checkTapTC does in a throwaway network namespace what a pod's network
// needs: a tap device, an ingress qdisc and a u32 mirred redirect.
func checkTapTC(ctx context.Context) Result {
	r := Result{Name: "tap + tc mirred", Status: Fail}
	script := "ip tuntap add dev kasachk0 mode tap && ip link set kasachk0 up && " +
		"tc qdisc add dev kasachk0 ingress && " +
		"tc filter add dev kasachk0 parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev lo"
	if err := inThrowawayNetns(ctx, script); err != nil {
		r.Detail = err.Error()
		r.Remedy = "run as root with iproute2 installed and the tun, sch_ingress, cls_u32 and act_mirred kernel modules available"
		return r
	}
	r.Status = Pass
	r.Detail = "tap device, ingress qdisc and mirred redirect work"
	return r
}

// inThrowawayNetns runs the shell script in a network namespace of its own
// and returns its failure with what it wrote to stderr.
func inThrowawayNetns(ctx context.Context, script string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "unshare", "--net", "sh", "-c", script)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return errors.New(strings.TrimSpace(fmt.Sprintf("%v: %s", err, stderr.String())))
	}
	return nil
}

// checkPortForward does in a throwaway network namespace what a pod's port
// forwarding needs (virtcontainers/portforward): iptables and ip6tables
// with a nat REDIRECT. Without them pods run, but without port forwarding.
func checkPortForward(ctx context.Context, cfg *configuration.Config) Result {
	r := Result{Name: "port forwarding", Status: Warn}
	if t, _ := virtcontainers.SelectTransport(cfg.Agent.Transport); t == hypervisor.TransportVirtioSerial {
		r.Status = Info
		r.Detail = "unavailable with agent.kata.transport = \"virtio-serial\""
		return r
	}
	script := "PATH=$PATH:/usr/sbin:/sbin; ip link set lo up && " +
		"iptables -w 5 -t nat -A OUTPUT -o lo -d 127.0.0.1/32 -p tcp ! --dport 1 -j REDIRECT --to-ports 1 && " +
		"ip6tables -w 5 -t nat -A OUTPUT -o lo -d ::1/128 -p tcp ! --dport 1 -j REDIRECT --to-ports 1"
	if err := inThrowawayNetns(ctx, script); err != nil {
		r.Detail = err.Error()
		r.Remedy = "install iptables (apt-get install iptables) with the nat table (nf_nat, xt_REDIRECT or nft_redir) available; pods run without port forwarding until then"
		return r
	}
	r.Status = Pass
	r.Detail = "iptables and ip6tables nat REDIRECT work in a pod's netns"
	return r
}

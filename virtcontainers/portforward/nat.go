package portforward

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/vishvananda/netns"
)

// Chain is the nat chain the forwarder adds to the pod's netns; OUTPUT
// jumps to it for packets leaving through lo. The netns is the pod's, so
// one name serves every sandbox.
const Chain = "KASA-PORTFORWARD"

const jumpComment = "kasa port-forward"

// inNetNS runs fn on a locked thread that has joined the network
// namespace at path, then puts the thread back into its own. Should that
// fail, the thread stays locked and so is never reused (the runtime ends
// it with its goroutine). The thread holds no reference to the pod's netns
// afterwards: it must not keep the netns alive after the pod.
func inNetNS(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("own netns: %w", err)
			return
		}
		defer orig.Close()
		ns, err := netns.GetFromPath(path)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open netns %s: %w", path, err)
			return
		}
		err = netns.Set(ns)
		ns.Close()
		if err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", path, err)
			if netns.Set(orig) == nil {
				runtime.UnlockOSThread()
			}
			return
		}
		err = fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// iptablesFor finds iptables or ip6tables: on PATH (containerd's may lack
// the sbin directories), else in /usr/sbin or /sbin.
func iptablesFor(v6 bool) (string, error) {
	name := "iptables"
	if v6 {
		name = "ip6tables"
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		p := dir + "/" + name
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found (apt-get install iptables)", name)
}

// ipt runs iptables (ip6tables with v6) in the calling thread's network
// namespace, with the xtables lock waited for.
func ipt(v6 bool, args ...string) error {
	bin, err := iptablesFor(v6)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, append([]string{"-w", "5", "-t", "nat"}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", bin, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

func loopback(v6 bool) string {
	if v6 {
		return "::1/128"
	}
	return "127.0.0.1/32"
}

// install adds, in the calling thread's netns, the rules redirecting TCP
// to the loopback address of the family, any port but port, to port.
func install(v6 bool, port int) error {
	removeRules(v6) // a previous attempt's, if any
	p := strconv.Itoa(port)
	if err := ipt(v6, "-N", Chain); err != nil {
		return err
	}
	err := ipt(v6, "-A", Chain, "-d", loopback(v6), "-p", "tcp", "!", "--dport", p, "-j", "REDIRECT", "--to-ports", p)
	if err == nil {
		err = ipt(v6, jumpRule("-A")...)
	}
	if err != nil {
		removeRules(v6)
	}
	return err
}

func jumpRule(op string) []string {
	return []string{op, "OUTPUT", "-o", "lo", "-m", "comment", "--comment", jumpComment, "-j", Chain}
}

// removeRules deletes the jump and the chain from the calling thread's
// netns. Absent rules are no error.
func removeRules(v6 bool) error {
	if _, err := iptablesFor(v6); err != nil {
		return nil // nothing can have been installed with it
	}
	if ipt(v6, "-S", Chain) != nil {
		return nil // no chain: nothing of ours
	}
	var errs []error
	for i := 0; i < 16 && ipt(v6, jumpRule("-C")...) == nil; i++ {
		if err := ipt(v6, jumpRule("-D")...); err != nil {
			errs = append(errs, err)
			break
		}
	}
	if err := ipt(v6, "-F", Chain); err != nil {
		errs = append(errs, err)
	}
	if err := ipt(v6, "-X", Chain); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Cleanup removes the rules a forwarder added to the network namespace at
// netnsPath, for a shim that died without stopping it. A netns that no
// longer exists took them with it. Idempotent.
func Cleanup(netnsPath string) error {
	if netnsPath == "" {
		return nil
	}
	if _, err := os.Stat(netnsPath); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	err := inNetNS(netnsPath, func() error {
		return errors.Join(removeRules(false), removeRules(true))
	})
	if errors.Is(err, syscall.EINVAL) {
		return nil // the path is no longer a netns: it is gone
	}
	return err
}

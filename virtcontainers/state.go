package virtcontainers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/kasa-runtime/kasa/configuration"
	"github.com/kasa-runtime/kasa/virtcontainers/fsshare"
	"github.com/kasa-runtime/kasa/virtcontainers/network"
	"github.com/kasa-runtime/kasa/virtcontainers/podcgroup"
	"github.com/kasa-runtime/kasa/virtcontainers/portforward"
	"github.com/kasa-runtime/kasa/virtcontainers/vmmuser"
)

// SandboxStateRoot holds each sandbox's persisted state (docs/architecture.md, "Contracts"), so that
// a restarted shim or `shim delete` can clean up after a crashed one.
var SandboxStateRoot = "/run/kasa/sbs"

// sandboxState is what a later process needs to find everything a sandbox made.
type sandboxState struct {
	ID            string    `json:"id"`
	Hypervisor    string    `json:"hypervisor"`
	HypervisorPID int       `json:"hypervisor_pid"`
	VMStateDir    string    `json:"vm_state_dir"`
	SharedDir     string    `json:"shared_dir"`
	Containers    []string  `json:"containers"`
	CreatedAt     time.Time `json:"created_at"`
	// NetNS and Taps let a later process remove the taps and tc filters
	// this sandbox added to the pod's network namespace.
	NetNS string     `json:"netns,omitempty"`
	Taps  []tapState `json:"taps,omitempty"`
	// Cgroup is the pod cgroup the VM and its daemons were placed in.
	Cgroup string `json:"cgroup,omitempty"`
	// PortForwardPort is the port-forward listener's port in NetNS. Its nat
	// rules are removed from NetNS whether or not it is set: a shim may die
	// between adding them and persisting this.
	PortForwardPort int `json:"port_forward_port,omitempty"`
	// OwnerPID and OwnerStart (its start time in clock ticks since boot)
	// name the process that made the sandbox and removes it: once it is
	// gone with the state still here, the sandbox is an orphan
	// (ReapOrphans).
	OwnerPID   int    `json:"owner_pid,omitempty"`
	OwnerStart uint64 `json:"owner_start,omitempty"`
	OwnerPIDNS string `json:"owner_pidns,omitempty"`
}

type tapState struct {
	Name      string `json:"name"`
	Kind      string `json:"kind,omitempty"` // network.KindTCFilter when empty
	Index     int    `json:"index"`
	VethIndex int    `json:"veth_index"`
	// VethMAC is the veth's own MAC, which macvtap replaced.
	VethMAC string `json:"veth_mac,omitempty"`
}

// cgroupEmptyWait bounds the wait for a dead sandbox's processes to leave
// its pod cgroup.
const cgroupEmptyWait = 5 * time.Second

func stateDir(id string) string { return filepath.Join(SandboxStateRoot, id) }

// saveState writes the state atomically (write, fsync, rename).
func saveState(st *sandboxState) error {
	dir := stateDir(st.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".state-*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(b); err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(dir, "state.json"))
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("persist sandbox state: %w", err)
	}
	return nil
}

func removeState(id string) error { return os.RemoveAll(stateDir(id)) }

func loadState(id string) (*sandboxState, error) {
	b, err := os.ReadFile(filepath.Join(stateDir(id), "state.json"))
	if err != nil {
		return nil, err
	}
	var st sandboxState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("sandbox %s state: %w", id, err)
	}
	return &st, nil
}

// CleanupSandbox removes whatever sandbox id left behind when its owner died:
// the hypervisor process, the shared directory's mounts, and the state
// directories. It works from the persisted state, or from the default
// locations when there is none, and is idempotent.
func CleanupSandbox(ctx context.Context, id string) error {
	if err := validID(id); err != nil {
		return err
	}
	logger := log.G(ctx).WithField("sandbox", id)
	unlock, err := lockCleanups()
	if err != nil {
		return err
	}
	defer unlock()
	st, err := loadState(id)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			logger.WithError(err).Warn("unreadable sandbox state; cleaning up the default locations")
		}
		st = &sandboxState{ID: id, VMStateDir: filepath.Join(VMStateRoot, id), SharedDir: filepath.Join(fsshare.Root, id)}
	}
	var errs []error
	vmmUID := vmmuser.Lookup(id)
	name := configuration.HypervisorName(st.Hypervisor)
	if name == "" {
		name = configuration.HypervisorQEMU // state written before boot, or none
	}
	if d, err := driverFor(name); err != nil {
		errs = append(errs, err)
	} else if err := d.KillOrphan(st.VMStateDir, id, vmmUID); err != nil {
		errs = append(errs, err)
	} else if err := vmmuser.Release(vmmUID, id); err != nil {
		errs = append(errs, err)
	}
	if err := portforward.Cleanup(st.NetNS); err != nil {
		errs = append(errs, err)
	}
	taps := st.Taps
	if len(taps) > 0 && !netnsExists(st.NetNS) {
		// The pod's network namespace is gone, and its taps and filters
		// with it (a manager removes it at RemovePodSandbox).
		logger.WithField("netns", st.NetNS).Debug("pod network namespace gone: no taps to remove")
		taps = nil
	}
	for _, t := range taps {
		mac, _ := net.ParseMAC(t.VethMAC)
		if err := network.ExistingTap(st.NetNS, t.Name, t.Kind, t.Index, t.VethIndex, mac).Detach(); err != nil {
			errs = append(errs, err)
		}
	}
	// Whatever else of the sandbox still runs (virtiofsd and its child,
	// a QEMU that escaped the checks above) is in the pod's cgroup.
	var cg *podcgroup.Group
	if st.Cgroup != "" {
		if g, err := podcgroup.Create(st.Cgroup); err == nil { // opens it
			cg = g
			cg.KillAll()
		}
	}
	share := fsshare.Open(id, 0)
	share.HostDir = st.SharedDir
	if err := share.Destroy(); err != nil {
		errs = append(errs, err)
	}
	if err := cg.DeleteWithin(cgroupEmptyWait); err != nil {
		errs = append(errs, err)
	} else if err := vmmuser.ReleaseRange(vmmuser.LookupRange(id), id); err != nil {
		errs = append(errs, err) // virtiofsd's ids, once it has left the cgroup
	}
	if len(errs) == 0 {
		if err := removeState(id); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clean up sandbox %s: %w", id, err)
	}
	logger.Info("sandbox cleaned up")
	return nil
}

// netnsExists reports whether path still names a network namespace: a
// pinned one is an nsfs file (bind mount), a /proc one a live process's.
func netnsExists(path string) bool {
	if path == "" {
		return false
	}
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.NSFS_MAGIC
}

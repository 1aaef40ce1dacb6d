package virtcontainers

import (
	"context"
	"slices"
	"sync"
	"time"
)

// BootStep is a step of a sandbox's start, in the order CreateSandbox
// takes them. Metrics use the names as label values: the set is fixed.
type BootStep string

const (
	StepSharedDir BootStep = "shared_dir" // the shared directory (fsshare.New)
	StepState     BootStep = "state"      // the persisted state, before the VM exists
	StepCgroup    BootStep = "cgroup"     // the pod cgroup
	StepSharedFS  BootStep = "shared_fs"  // virtiofsd
	StepNetwork   BootStep = "network"    // taps and tc filters in the pod netns
	// StepVMCreate is the driver's CreateVM with what precedes it: the VMM
	// uid, the VM template (made first if there is none), and in the driver
	// validation, the vhost-vsock CID, the accelerator's probe and the
	// command line.
	StepVMCreate BootStep = "vm_create"
	// StepAdmission is the wait for one of the node's boot slots
	// (runtime.max_concurrent_boots): a queue behind other starts.
	StepAdmission BootStep = "admission"
	// StepVMStart is the VMM's launch until it is controllable (QMP).
	StepVMStart BootStep = "vm_start"
	// StepAgent is the guest's boot until its agent answered (Version,
	// Check, SetGuestDateTime).
	StepAgent        BootStep = "agent"
	StepGuestNetwork BootStep = "guest_network" // the guest's interfaces, routes, neighbours
	StepGuestSandbox BootStep = "guest_sandbox" // the agent's CreateSandbox: hostname, shared mount
	StepPortForward  BootStep = "port_forward"  // the pod's port forwarder
)

// BootSteps are all the steps, in order.
var BootSteps = []BootStep{StepSharedDir, StepState, StepCgroup, StepSharedFS, StepNetwork,
	StepVMCreate, StepAdmission, StepVMStart, StepAgent, StepGuestNetwork, StepGuestSandbox, StepPortForward}

// VMStart is how a sandbox's VM started. Metrics use the names as label
// values: the set is fixed.
type VMStart string

const (
	// VMStartCold is a VM that booted: firmware, kernel, the agent's init.
	VMStartCold VMStart = "cold"
	// VMStartTemplate is a clone of a VM template: its guest resumed from
	// the template's saved memory and device state (templates.go).
	VMStartTemplate VMStart = "template"
)

// VMStarts are all the kinds of VM start.
var VMStarts = []VMStart{VMStartCold, VMStartTemplate}

// BootPhase is how long one step of a start took.
type BootPhase struct {
	Step     BootStep
	Duration time.Duration
}

// BootRecord times the steps of one sandbox's start, and tells at which
// one it failed. The caller of CreateSandbox may give one
// (SandboxConfig.Boot) to read it afterwards. A nil *BootRecord records
// nothing. It is safe for concurrent use.
type BootRecord struct {
	mu       sync.Mutex
	start    time.Time
	current  BootStep
	since    time.Time
	phases   []BootPhase
	finished bool
	total    time.Duration
	vmStart  VMStart
}

// NewBootRecord returns a record whose clock starts now.
func NewBootRecord() *BootRecord {
	now := time.Now()
	return &BootRecord{start: now, since: now}
}

// begin ends the step under way, if any, and starts step.
func (r *BootRecord) begin(step BootStep) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.endCurrent(time.Now())
	r.current = step
}

// finish ends the last step: the start succeeded.
func (r *BootRecord) finish() {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	r.endCurrent(now)
	r.finished, r.total = true, now.Sub(r.start)
}

// endCurrent adds the time since the step under way began to that step:
// a step taken twice (the state is saved before and after the VM starts)
// is one phase.
func (r *BootRecord) endCurrent(now time.Time) {
	if r.current != "" {
		i := slices.IndexFunc(r.phases, func(p BootPhase) bool { return p.Step == r.current })
		if i < 0 {
			r.phases = append(r.phases, BootPhase{Step: r.current})
			i = len(r.phases) - 1
		}
		r.phases[i].Duration += now.Sub(r.since)
	}
	r.current, r.since = "", now
}

// Phases are the steps ended so far, each once, in the order they were
// first taken, with their durations.
func (r *BootRecord) Phases() []BootPhase {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]BootPhase(nil), r.phases...)
}

// Total is the whole start's duration, once it succeeded.
func (r *BootRecord) Total() (time.Duration, bool) {
	if r == nil {
		return 0, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.total, r.finished
}

// Current is the step under way: after a failed start, the step that
// failed; "" before the first step and after a success.
func (r *BootRecord) Current() BootStep {
	if r == nil {
		return ""
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.current
}

// setVMStart records how the VM starts, once the driver has accepted it
// (startVM, after CreateVM).
func (r *BootRecord) setVMStart(s VMStart) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.vmStart = s
}

// VMStart is how the sandbox's VM started: VMStartCold or
// VMStartTemplate; "" before the VM was created.
func (r *BootRecord) VMStart() VMStart {
	if r == nil {
		return ""
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.vmStart
}

type bootRecordKey struct{}

func withBootRecord(ctx context.Context, r *BootRecord) context.Context {
	return context.WithValue(ctx, bootRecordKey{}, r)
}

// bootRecordFrom is the record of the start ctx belongs to, or nil.
func bootRecordFrom(ctx context.Context) *BootRecord {
	r, _ := ctx.Value(bootRecordKey{}).(*BootRecord)
	return r
}

// BootRecordForTest returns the record of a start that finished, its VM
// started as start, with phases: the seam for tests of what reads records
// (metrics), which cannot take a start's steps themselves.
func BootRecordForTest(start VMStart, phases ...BootPhase) *BootRecord {
	r := NewBootRecord()
	r.vmStart, r.finished = start, true
	for _, p := range phases {
		r.phases = append(r.phases, p)
		r.total += p.Duration
	}
	return r
}

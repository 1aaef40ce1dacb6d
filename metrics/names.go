// Package metrics is Kasa's Prometheus metrics: what each shim serves about
// its sandbox on its own socket, the node's counters the shims leave in
// files, and the gathering behind `kasa monitor`. Every metric name and
// label is listed in this file (docs/metrics.md describes them).
package metrics

import (
	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/virtcontainers"
)

// Labels every series of a sandbox carries. The pod labels come from the
// CRI annotations of the sandbox container and are left out when unknown.
const (
	LabelSandboxID    = "sandbox_id"
	LabelPodName      = "pod_name"
	LabelPodNamespace = "pod_namespace"
	LabelPodUID       = "pod_uid"
)

// Per-sandbox metrics, served by the sandbox's shim.
const (
	// Gauge, seconds, label "start" (StartLabels): the whole start, from
	// the shim's first step to the guest ready.
	SandboxBootSeconds = "kasa_sandbox_boot_seconds"
	// Gauge, seconds, labels "phase" (virtcontainers.BootSteps) and "start".
	SandboxBootPhaseSeconds = "kasa_sandbox_boot_phase_seconds"
	// Histogram, seconds, label "method" (agent.proto's RPC names, or
	// "unknown"). Long polls (WaitProcess, ReadStdout, ReadStderr,
	// GetOOMEvent) last as long as what they wait for.
	AgentRPCSeconds = "kasa_agent_rpc_duration_seconds"
	// Counter, label "method": RPCs that returned an error.
	AgentRPCErrors = "kasa_agent_rpc_errors_total"
	// Counter: guest metrics dropped because they were not what the agent
	// may send (agent/api/metrics.go), or the answer was malformed.
	GuestMetricsRejected = "kasa_guest_metrics_rejected_total"
	// Gauges, bytes, and a counter, seconds, label "process" (HostProcesses).
	HostProcessRSSBytes   = "kasa_host_process_resident_memory_bytes"
	HostProcessPSSBytes   = "kasa_host_process_proportional_memory_bytes"
	HostProcessCPUSeconds = "kasa_host_process_cpu_seconds_total"
	// The vhost-user-vsock backend's counters (absent with kernel
	// vhost-vsock and virtio-serial). Bytes has label "direction".
	VsockBytes            = "kasa_vsock_bytes_total"
	VsockResets           = "kasa_vsock_resets_total"
	VsockConnections      = "kasa_vsock_connections"
	VsockRefused          = "kasa_vsock_connections_refused_total"
	VsockCreditViolations = "kasa_vsock_credit_violations_total"
	VsockPacketsDropped   = "kasa_vsock_packets_dropped_total"
	ContainerOOMEvents    = "kasa_container_oom_events_total"
	ContainerExits        = "kasa_container_exits_total" // label "exit": ExitZero, ExitNonzero, ExitSignal
	labelPhase            = "phase"
	labelStart            = "start"
	labelMethod           = "method"
	labelProcess          = "process"
	labelDirection        = "direction"
	labelExit             = "exit"
	directionFromGuest    = "from_guest"
	directionToGuest      = "to_guest"
	processShim           = "shim"
)

// Values of ContainerExits' label: status 0, 129-192 (killed by a signal,
// as the shell counts), any other.
const (
	ExitZero    = "zero"
	ExitSignal  = "signal"
	ExitNonzero = "nonzero"
)

// Node metrics, served by `kasa monitor`.
const (
	// Gauge: sandboxes whose shim serves metrics (accepts a connection).
	SandboxesRunning = "kasa_sandboxes_running"
	// Counter, label "start" (StartLabels, and StartUnknown for what a
	// shim counted before the label existed): sandbox starts that
	// succeeded, on this node since boot.
	SandboxStarts = "kasa_sandbox_starts_total"
	// Counter, label "reason" (FailureReasons): starts that failed.
	SandboxStartFailures = "kasa_sandbox_start_failures_total"
	// Gauge, label sandbox_id: 1 if the shim's metrics were gathered in
	// this scrape, else 0.
	MonitorShimUp = "kasa_monitor_shim_up"
	// Counter, label "reason" (ScrapeErrorReasons): shims that did not
	// answer a scrape usably.
	MonitorScrapeErrors = "kasa_monitor_shim_scrape_errors_total"
	labelReason         = "reason"
)

// Values of the "start" label: how the sandbox's VM started
// (virtcontainers.VMStart).
const (
	StartCold     = string(virtcontainers.VMStartCold)     // booted
	StartTemplate = string(virtcontainers.VMStartTemplate) // cloned from a VM template
	// StartUnknown is SandboxStarts' count of the starts a shim recorded
	// before the label existed (the counters live on /run across an
	// upgrade); served only while it is not zero.
	StartUnknown = "unknown"
)

// StartLabels are the values of the "start" label a start is recorded with.
var StartLabels = func() []string {
	var out []string
	for _, s := range virtcontainers.VMStarts {
		out = append(out, string(s))
	}
	return out
}()

// Failure reasons of SandboxStartFailures: the step of the start that
// failed (virtcontainers.BootSteps), or one of the shim's own.
const (
	ReasonConfig    = "config"    // configuration, annotations, sizing, refused host namespaces
	ReasonReaper    = "reaper"    // the sandbox's reaper did not start
	ReasonCancelled = "cancelled" // the start was cancelled (Kill, Delete, Shutdown)
	ReasonOther     = "other"
)

// FailureReasons are all the values of SandboxStartFailures' label.
var FailureReasons = func() []string {
	out := []string{ReasonConfig, ReasonReaper}
	for _, s := range virtcontainers.BootSteps {
		out = append(out, string(s))
	}
	return append(out, ReasonCancelled, ReasonOther)
}()

// Reasons of MonitorScrapeErrors.
const (
	ScrapeUnreachable = "unreachable" // no connection (a shim gone, a stale socket)
	ScrapeTimeout     = "timeout"     // no whole answer within the monitor's bound
	ScrapeBadAnswer   = "bad_answer"  // not 200, too large, not the text format, or series of another sandbox
)

// guestFamilies are the guest metrics the shim passes on, with their type
// (agent/api/metrics.go).
var guestFamilies = map[string]familyType{
	api.GuestMemoryTotalBytes:     gauge,
	api.GuestMemoryAvailableBytes: gauge,
	api.GuestMemoryFreeBytes:      gauge,
	api.GuestAgentRSSBytes:        gauge,
	api.GuestCPUsOnline:           gauge,
	api.GuestCPUSeconds:           counter,
}

type familyType int

const (
	gauge familyType = iota
	counter
)

const (
	guestCPUSeconds   = api.GuestCPUSeconds
	guestCPUModeLabel = api.GuestCPUModeLabel
)

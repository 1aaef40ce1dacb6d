package api

// The guest metrics GetMetrics returns: the agent writes these families,
// and only these, in the Prometheus text format; the host accepts only
// these (names, types, the label and its values below) and drops anything
// else the guest sends. Values are the guest's own view: /proc/meminfo,
// the first line of /proc/stat, the online CPUs, the agent's RSS.
const (
	// Gauges, bytes, no labels.
	GuestMemoryTotalBytes     = "kasa_guest_memory_total_bytes"
	GuestMemoryAvailableBytes = "kasa_guest_memory_available_bytes"
	GuestMemoryFreeBytes      = "kasa_guest_memory_free_bytes"
	GuestAgentRSSBytes        = "kasa_guest_agent_resident_memory_bytes"
	// Gauge, no labels.
	GuestCPUsOnline = "kasa_guest_cpus_online"
	// Counter, seconds, summed over the guest's CPUs, label GuestCPUModeLabel.
	GuestCPUSeconds = "kasa_guest_cpu_seconds_total"
	// GuestCPUModeLabel is GuestCPUSeconds' one label.
	GuestCPUModeLabel = "mode"
)

// GuestCPUModes are the values of GuestCPUModeLabel, in /proc/stat's order.
var GuestCPUModes = []string{"user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"}

// MaxMetricsBytes bounds GetMetricsResponse.prometheus_text: the families
// above take about 2 KiB.
const MaxMetricsBytes = 64 << 10

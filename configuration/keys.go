package configuration

import (
	"fmt"
	"slices"

	"github.com/BurntSushi/toml"
)

// WarningKind says why a key was ignored.
type WarningKind int

const (
	// UnknownKey is a key neither Kasa nor Kata Containers knows: often a typo.
	UnknownKey WarningKind = iota
	// UnsupportedKataKey is a Kata Containers key Kasa does not implement.
	UnsupportedKataKey
)

// Warning is a key of a configuration file that was ignored. Ignoring keys
// rather than failing lets a Kata Containers user bring their file.
type Warning struct {
	// File is the configuration file ("" for the embedded defaults).
	File string
	// Key is the dotted TOML key, e.g. hypervisor.qemu.foo.
	Key     string
	Kind    WarningKind
	Message string
}

// String renders the warning as "file: message".
func (w Warning) String() string {
	return fileLabel(w.File) + ": " + w.Message
}

func newWarning(file string, key toml.Key, kind WarningKind) Warning {
	k := key.String()
	var msg string
	switch kind {
	case UnsupportedKataKey:
		msg = fmt.Sprintf("key %q: recognised Kata key, not supported by Kasa; ignored", k)
	default:
		msg = fmt.Sprintf("unknown key %q ignored", k)
	}
	return Warning{File: file, Key: k, Kind: kind, Message: msg}
}

// Keys of Kata Containers' configuration.toml that Kasa does not implement.
// Listing them turns "unknown key" into a clearer warning for Kata users.
var (
	kataSections = setOf("image", "netmon", "proxy", "shim")

	kataHypervisorKeys = setOf(
		"jailer_path", "valid_jailer_paths", "ctlpath", "valid_ctlpaths", "rootfs_type",
		"firmware_volume", "machine_accelerators", "cpu_features", "block_device_driver",
		"block_device_aio", "block_device_cache_set", "block_device_cache_direct",
		"block_device_cache_noflush", "disable_block_device_use", "entropy_source",
		"valid_entropy_sources", "virtio_fs_cache", "virtio_fs_cache_size", "virtio_fs_extra_args",
		"virtio_fs_queue_size", "vhost_user_store_path", "valid_vhost_user_store_paths",
		"enable_vhost_user_store", "vhost_user_reconnect_timeout_sec", "file_mem_backend",
		"valid_file_mem_backends", "guest_hook_path", "guest_memory_dump_path",
		"guest_memory_dump_paging", "pflashes", "rx_rate_limiter_max_rate",
		"tx_rate_limiter_max_rate", "disk_rate_limiter_bw_max_rate",
		"disk_rate_limiter_bw_one_time_burst", "disk_rate_limiter_ops_max_rate",
		"disk_rate_limiter_ops_one_time_burst", "net_rate_limiter_bw_max_rate",
		"net_rate_limiter_bw_one_time_burst", "net_rate_limiter_ops_max_rate",
		"net_rate_limiter_ops_one_time_burst", "memory_offset", "default_maxmemory",
		"default_bridges", "pcie_root_port", "pcie_switch_port", "hotplug_vfio_on_root_bus",
		"cold_plug_vfio", "hot_plug_vfio", "enable_mem_prealloc", "enable_hugepages",
		"enable_virtio_mem", "enable_iommu", "enable_iommu_platform", "disable_nesting_checks",
		"enable_iothreads", "indep_iothreads", "disable_image_nvdimm", "disable_vhost_net",
		"confidential_guest", "sev_snp_guest", "enable_guest_swap",
		"disable_seccomp", "disable_selinux", "disable_guest_selinux", "use_legacy_serial",
		"kernel_verity_params", "default_gpus", "default_gpu_model", "enable_swap",
		"remote_hypervisor_socket", "remote_hypervisor_timeout", "network_queues",
		// Memory hotplug: Kasa sizes the VM at boot (SizeForPod) and has
		// no hotplug, so slots would only reserve address space.
		"memory_slots",
	)

	// Kata's VM cache (vm_cache_*) is a gRPC factory service; Kasa has templates only.
	kataFactoryKeys = setOf("vm_cache_number", "vm_cache_endpoint")

	kataAgentKeys = setOf("enable_tracing", "container_pipe_size", "mem_agent", "cdh_api_timeout")

	kataRuntimeKeys = setOf(
		"enable_tracing", "jaeger_endpoint", "jaeger_user", "jaeger_password",
		"sandbox_bind_mounts", "experimental", "enable_pprof", "static_sandbox_resource_mgmt",
		"disable_guest_empty_dir", "vfio_mode", "enable_vcpus_pinning",
		"guest_selinux_label", "disable_selinux", "create_container_timeout", "dan_conf",
		"emptydir_mode", "pod_resource_api_sock",
	)
)

// undecodedWarnings classifies the keys the decoder did not use. A table is
// reported once, not once per key inside it.
func undecodedWarnings(file string, name HypervisorName, keys []toml.Key) []Warning {
	var warnings []Warning
	var reported []toml.Key
	for _, key := range keys {
		if hasReportedPrefix(reported, key) {
			continue
		}
		kind, key := classify(name, key)
		reported = append(reported, key)
		warnings = append(warnings, newWarning(file, key, kind))
	}
	return warnings
}

// classify returns why key is ignored and the key (or enclosing table) to report.
func classify(name HypervisorName, key toml.Key) (WarningKind, toml.Key) {
	switch {
	case kataSections[key[0]]:
		return UnsupportedKataKey, key[:1]
	case len(key) >= 3 && key[0] == "hypervisor" && key[1] == string(name):
		if kataHypervisorKeys[key[2]] {
			return UnsupportedKataKey, key[:3]
		}
		return UnknownKey, key[:3]
	case len(key) >= 3 && key[0] == "agent" && key[1] == "kata":
		if kataAgentKeys[key[2]] {
			return UnsupportedKataKey, key[:3]
		}
		return UnknownKey, key[:3]
	case len(key) >= 2 && key[0] == "factory":
		if kataFactoryKeys[key[1]] {
			return UnsupportedKataKey, key[:2]
		}
		return UnknownKey, key[:2]
	case len(key) >= 2 && key[0] == "runtime":
		if kataRuntimeKeys[key[1]] {
			return UnsupportedKataKey, key[:2]
		}
		return UnknownKey, key[:2]
	}
	return UnknownKey, key
}

func hasReportedPrefix(reported []toml.Key, key toml.Key) bool {
	for _, r := range reported {
		if len(r) <= len(key) && slices.Equal(r, key[:len(r)]) {
			return true
		}
	}
	return false
}

func setOf(keys ...string) map[string]bool {
	m := make(map[string]bool, len(keys))
	for _, k := range keys {
		m[k] = true
	}
	return m
}

package configuration

import (
	_ "embed"
	"fmt"
	"slices"
	"sync"
	"time"
)

// embeddedFile is the commented default file an operator installs as
// share/defaults/kasa/configuration.toml. A test keeps it equal to the Go
// defaults below.
//
//go:embed configuration.toml
var embeddedFile []byte

// DefaultFile returns the text of the embedded default configuration file.
func DefaultFile() []byte {
	return slices.Clone(embeddedFile)
}

// defaultConfig returns the values a file's keys start from before it is
// decoded, for a file whose hypervisor table is [hypervisor.<name>].
func defaultConfig(name HypervisorName) *Config {
	return &Config{
		HypervisorName: name,
		Hypervisor:     defaultHypervisor(),
		Agent: AgentConfig{
			DialTimeout: 45 * time.Second,
			Transport:   TransportAuto,
		},
		Runtime: RuntimeConfig{
			InterNetworkingModel: NetTCFilter,
		},
		Factory: FactoryConfig{
			EnableTemplate: true,
			TemplatePath:   DefaultTemplatePath,
		},
	}
}

// DefaultSeccompSandbox is QEMU's -sandbox value by default: its seccomp
// filter with every optional restriction on (no obsolete syscalls, no
// setuid and friends, no fork/exec, no scheduler or resource changes).
const DefaultSeccompSandbox = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// DefaultTemplatePath is where VM templates are kept: a tmpfs, because a
// template's memory file is mapped by every clone and must not outlive a
// reboot of the host (its kernel, QEMU or image may have changed).
const DefaultTemplatePath = "/run/kasa/template"

// DefaultVirtioFSDaemon is the virtiofsd Debian 12 ships with QEMU 7.2.
const DefaultVirtioFSDaemon = "/usr/lib/qemu/virtiofsd"

func defaultHypervisor() HypervisorConfig {
	return HypervisorConfig{
		Path:           "/usr/bin/qemu-system-x86_64",
		Kernel:         "/usr/share/kasa/vmlinuz",
		Initrd:         "/usr/share/kasa/initrd.img",
		MachineType:    MachineQ35,
		DefaultVCPUs:   1,
		DefaultMemory:  512,
		SharedFS:       SharedFSVirtioFS,
		VirtioFSDaemon: DefaultVirtioFSDaemon,
		MSize9P:        8192,
		Accelerator:    AccelAuto,
		Rootless:       true,
		VirtioFSUserns: VirtioFSUsernsAuto,
		SeccompSandbox: DefaultSeccompSandbox,

		ReclaimGuestFreedMemory: true,
	}
}

var parseEmbedded = sync.OnceValues(func() (*Config, error) {
	cfg, warnings, err := decode([]source{{path: "", data: embeddedFile}})
	if err == nil && len(warnings) > 0 {
		err = fmt.Errorf("embedded configuration.toml: %s", warnings[0])
	}
	return cfg, err
})

// Default returns the configuration used when no file is found: the parsed
// embedded configuration.toml. Path is "".
func Default() *Config {
	cfg, err := parseEmbedded()
	if err != nil {
		// The file is compiled in and checked by the tests.
		panic(fmt.Sprintf("configuration: broken embedded defaults: %v", err))
	}
	return cfg.Clone()
}

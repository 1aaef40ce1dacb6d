package main

// libcontainer applies OCI device rules (cgroup v2: an eBPF program) only
// when the devices manager is linked in; without it every container whose
// spec has device rules fails with "cgroup manager is not configured to set
// device rules".
import _ "github.com/opencontainers/cgroups/devices"

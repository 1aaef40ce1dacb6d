//go:build !amd64

package qemu

func rdtsc() uint64 { return 0 }

// haveTSC is false: a TCG guest's TSC then follows another host counter.
const haveTSC = false

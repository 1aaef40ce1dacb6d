package main

import "testing"

func TestWithBootSlots(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"[hypervisor.qemu]\nkernel = \"/k\"\n", "[hypervisor.qemu]\nkernel = \"/k\"\n\n[runtime]\nmax_concurrent_boots = 3\n"},
		{"[runtime]\nenable_debug = true\n", "[runtime]\nmax_concurrent_boots = 3\nenable_debug = true\n"},
		{"[a]\nx = 1\n[runtime]\nmax_concurrent_boots = 0\n", "[a]\nx = 1\n[runtime]\nmax_concurrent_boots = 3\n"},
	} {
		if got := withBootSlots(c.in, 3); got != c.want {
			t.Errorf("withBootSlots(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

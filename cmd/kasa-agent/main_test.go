package main

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// initLinePattern matches a line of GODEBUG=inittrace=1:
// "init PKG @T ms, D ms clock, B bytes, A allocs".
const initLinePattern = `^init (\S+) @\S+ ms, \S+ ms clock, (\d+) bytes, (\d+) allocs$`

// Limits on what one of the agent's own packages may allocate while it is
// initialized. libcontainer starts this binary again for every container
// and every exec ("kasa-agent init"), and each of those processes runs every
// package initializer before it can do anything; in a VM that has just been
// restored under TCG each of them also runs as new code. A regexp compiled
// into a package variable (1704 allocations) or a CRC table made at init
// (14 KiB) cost 40 and 20 ms of every container start that way.
const (
	maxInitAllocs = 100
	maxInitBytes  = 8 << 10
)

// generated: packages whose initializer registers protobuf descriptors,
// which is what they are for; their size follows the API, not a mistake.
var generated = map[string]bool{"github.com/kasa-runtime/kasa/agent/api": true}

// TestPackageInitIsCheap runs this test binary (which links everything the
// agent does) with the runtime's init trace and checks each of Kasa's
// packages against the limits above. Counts of allocations and bytes do not
// depend on how busy the machine is; times would.
func TestPackageInitIsCheap(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "GODEBUG=inittrace=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\n%s", os.Args[0], err, stderr.Bytes())
	}
	initLine := regexp.MustCompile(initLinePattern) // not a package variable: see above
	seen := 0
	sc := bufio.NewScanner(&stderr)
	for sc.Scan() {
		m := initLine.FindStringSubmatch(sc.Text())
		if m == nil || !strings.HasPrefix(m[1], "github.com/kasa-runtime/kasa/") {
			continue
		}
		seen++
		bytes, _ := strconv.Atoi(m[2])
		allocs, _ := strconv.Atoi(m[3])
		if allocs > maxInitAllocs || (bytes > maxInitBytes && !generated[m[1]]) {
			t.Errorf("package %s allocates %d bytes in %d allocations at init (limits %d bytes, %d allocations): make it on first use instead, since every container and exec start in the guest pays for it",
				m[1], bytes, allocs, maxInitBytes, maxInitAllocs)
		}
	}
	// The trace names only packages whose initializer does something; the
	// agent's container package (for one) always has some.
	if seen == 0 {
		t.Fatalf("no init trace of Kasa's packages in:\n%s", stderr.Bytes())
	}
}

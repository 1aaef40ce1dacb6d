package vmmuser

// The id ranges of virtiofsd's user namespaces. A virtiofsd that serves a
// sandbox without root runs in a user namespace whose ids 0..65535 are the
// host ids First..First+65535 of a block of its own: its root is a host
// uid no file and no other process has. The blocks follow the VMM uids and
// end below 2^31: (0x80000000 - RangeBase) / RangeSize of them.
const (
	// RangeBase is the first id of the first block, right after the VMM uids.
	RangeBase = Base + Count
	// RangeSize is the ids per block: the 16-bit ids container images use.
	RangeSize uint32 = 65536
	// RangeCount is the number of blocks: sandboxes with such a virtiofsd
	// at once.
	RangeCount = (1<<31 - RangeBase) / RangeSize
)

// RangeDir records the blocks in use, by their first id.
var RangeDir = "/run/kasa/vmm-idrange"

var idRanges = pool{name: "virtiofsd id range", dir: &RangeDir, first: RangeBase, size: RangeSize, count: RangeCount}

// AllocateRange returns the first host id of sandboxID's block: the one it
// already has, or a free one.
func AllocateRange(sandboxID string) (uint32, error) { return idRanges.allocate(sandboxID) }

// ReleaseRange frees the block starting at first if sandboxID holds it;
// like Release, it may run more than once.
func ReleaseRange(first uint32, sandboxID string) error { return idRanges.release(first, sandboxID) }

// LookupRange returns the first id of the block sandboxID holds, or 0.
func LookupRange(sandboxID string) uint32 { return idRanges.lookup(sandboxID) }

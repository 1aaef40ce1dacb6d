package vmmuser

import (
	"fmt"
	"sync"
	"testing"
)

func TestAllocateDistinctStableAndReleased(t *testing.T) {
	Dir = t.TempDir()
	const n = 200
	uids := make([]uint32, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			uid, err := Allocate(fmt.Sprintf("sandbox-%d", i))
			if err != nil {
				t.Error(err)
			}
			uids[i] = uid
		}()
	}
	wg.Wait()
	seen := map[uint32]bool{}
	for i, uid := range uids {
		if uid < Base || uid >= Base+Count {
			t.Fatalf("uid %d outside the range", uid)
		}
		if seen[uid] {
			t.Fatalf("uid %d given twice", uid)
		}
		seen[uid] = true
		if again, err := Allocate(fmt.Sprintf("sandbox-%d", i)); err != nil || again != uid {
			t.Fatalf("second Allocate of sandbox-%d = %d, %v; want %d", i, again, err, uid)
		}
	}
	// Another sandbox cannot release it; its own can, twice.
	if err := Release(uids[0], "intruder"); err != nil {
		t.Fatal(err)
	}
	if again, _ := Allocate("sandbox-0"); again != uids[0] {
		t.Fatalf("a foreign Release freed the uid")
	}
	for range 2 {
		if err := Release(uids[0], "sandbox-0"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Allocate("bad/id"); err == nil {
		t.Fatal("an id with a slash was accepted")
	}
}

func TestRangesDisjointFromUIDsAndEachOther(t *testing.T) {
	RangeDir = t.TempDir()
	if RangeBase < Base+Count || uint64(RangeBase)+uint64(RangeCount)*uint64(RangeSize) > 1<<31 {
		t.Fatalf("blocks %d + %d×%d leave the reserved range or overlap the VMM uids", RangeBase, RangeCount, RangeSize)
	}
	seen := map[uint32]bool{}
	for i := range 300 {
		first, err := AllocateRange(fmt.Sprintf("sandbox-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		if first < RangeBase || (first-RangeBase)%RangeSize != 0 || first-RangeBase >= RangeCount*RangeSize {
			t.Fatalf("block %d is not a block of the range", first)
		}
		if seen[first] {
			t.Fatalf("block %d given twice", first)
		}
		seen[first] = true
	}
	first := LookupRange("sandbox-7")
	if first == 0 {
		t.Fatal("LookupRange found nothing")
	}
	if err := ReleaseRange(first, "sandbox-7"); err != nil {
		t.Fatal(err)
	}
	if LookupRange("sandbox-7") != 0 {
		t.Fatal("released block still found")
	}
}

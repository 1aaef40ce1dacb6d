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

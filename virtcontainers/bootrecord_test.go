package virtcontainers

import (
	"context"
	"testing"
)

func TestBootRecord(t *testing.T) {
	r := NewBootRecord()
	ctx := withBootRecord(context.Background(), r)
	bootRecordFrom(ctx).begin(StepSharedDir)
	bootRecordFrom(ctx).begin(StepVMStart)
	bootRecordFrom(ctx).begin(StepSharedDir) // a step taken again adds to its phase
	bootRecordFrom(ctx).begin(StepVMStart)
	if r.Current() != StepVMStart {
		t.Errorf("current %q", r.Current())
	}
	if _, ok := r.Total(); ok {
		t.Error("total before the end")
	}
	r.finish()
	if total, ok := r.Total(); !ok || total <= 0 {
		t.Errorf("total %v, %v", total, ok)
	}
	p := r.Phases()
	if len(p) != 2 || p[0].Step != StepSharedDir || p[1].Step != StepVMStart || r.Current() != "" {
		t.Errorf("phases %v, current %q", p, r.Current())
	}
	// Without a record nothing is recorded, and nothing breaks.
	var none *BootRecord
	bootRecordFrom(context.Background()).begin(StepAgent)
	none.finish()
	if none.Current() != "" || none.Phases() != nil {
		t.Error("a nil record recorded")
	}
}

package virtcontainers

import (
	"context"
	"strings"
	"testing"

	"github.com/kasa-runtime/kasa/configuration"
	"github.com/kasa-runtime/kasa/virtcontainers/fsshare"
)

func TestVirtiofsdUnprivileged(t *testing.T) {
	release, overlayLayers, tmpfs := fsshare.KernelIdmaps()
	h := configuration.Default().Hypervisor
	for _, tt := range []struct {
		rootless bool
		mode     configuration.VirtioFSUsernsMode
		want     bool
		why      string
	}{
		{true, configuration.VirtioFSUsernsOn, true, ""},
		{true, configuration.VirtioFSUsernsOff, false, `virtio_fs_userns = "off"`},
		{false, configuration.VirtioFSUsernsOn, false, "rootless = false"},
		{true, configuration.VirtioFSUsernsAuto, overlayLayers && tmpfs, "cannot idmap tmpfs"},
	} {
		h.Rootless, h.VirtioFSUserns = tt.rootless, tt.mode
		got, why := VirtiofsdUnprivileged(h)
		if got != tt.want || (!got && !strings.Contains(why, tt.why)) {
			t.Errorf("rootless %v, %q on Linux %s: %v (%s), want %v (%s)", tt.rootless, tt.mode, release, got, why, tt.want, tt.why)
		}
	}
}

// With "auto", a pod whose root filesystems come mounted (CRI-O) gets a
// root virtiofsd without an id block; "on" keeps it unprivileged.
func TestVirtiofsdIDsPremounted(t *testing.T) {
	h := configuration.Default().Hypervisor
	h.VirtioFSUserns = configuration.VirtioFSUsernsAuto
	if first, err := virtiofsdIDs(context.Background(), "premounted-auto", h, true); first != 0 || err != nil {
		t.Errorf("auto, premounted: ids from %d (%v), want a root virtiofsd", first, err)
	}
}

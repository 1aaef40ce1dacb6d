package fsshare

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The test binary doubles as a stand-in virtiofsd: it only has to create
// its socket, which is all StartVirtioFSD looks at.
func TestMain(m *testing.M) {
	if os.Getenv("KASA_FAKE_VIRTIOFSD") == "serve" {
		for _, a := range os.Args[1:] {
			if p, ok := strings.CutPrefix(a, "--socket-path="); ok {
				l, err := net.Listen("unix", p)
				if err != nil {
					os.Exit(3)
				}
				defer l.Close()
				time.Sleep(time.Minute)
			}
		}
		os.Exit(0)
	}
	if os.Getenv("KASA_FAKE_VIRTIOFSD") == "fail" {
		os.Stderr.WriteString("virtiofsd: bad option\n")
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func TestVirtioFSDArgs(t *testing.T) {
	got := strings.Join(VirtioFSDArgs("/run/kasa/vm/x/vfs.sock", "/run/kasa/shared/x"), " ")
	for _, want := range []string{"--socket-path=/run/kasa/vm/x/vfs.sock", "--shared-dir=/run/kasa/shared/x", "--announce-submounts"} {
		if !strings.Contains(got, want) {
			t.Errorf("args %q lack %q", got, want)
		}
	}
	st := Open("x", 0).GuestStorageVirtioFS()
	if st.GetFstype() != "virtiofs" || st.GetSource() != MountTag || st.GetMountPoint() != GuestRoot {
		t.Errorf("storage = %v", st)
	}
}

func TestStartVirtioFSD(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	s := &Share{SandboxID: "x", HostDir: t.TempDir()}
	sock := filepath.Join(t.TempDir(), "vfs.sock")

	t.Setenv("KASA_FAKE_VIRTIOFSD", "serve")
	d, err := s.StartVirtioFSD(context.Background(), self, sock)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := d.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}

	t.Setenv("KASA_FAKE_VIRTIOFSD", "fail")
	_, err = s.StartVirtioFSD(context.Background(), self, filepath.Join(t.TempDir(), "vfs.sock"))
	if err == nil || !strings.Contains(err.Error(), "bad option") {
		t.Fatalf("a failing daemon: err = %v, want its own message", err)
	}
	if _, err := s.StartVirtioFSD(context.Background(), "/nonexistent/virtiofsd", sock+"2"); err == nil {
		t.Fatal("a missing daemon started")
	}
}

package fsshare

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// The test binary doubles as a stand-in virtiofsd of the C flavor: it
// answers --help like one, and in "serve" mode accepts one connection on the
// listening socket it inherits as fd 3 and writes "hello" to it.
func TestMain(m *testing.M) {
	switch os.Getenv("KASA_FAKE_VIRTIOFSD") {
	case "":
		os.Exit(m.Run())
	case "fail":
		if slices.Contains(os.Args[1:], "--help") {
			os.Stdout.WriteString("    -o source=PATH             shared directory tree\n")
			os.Exit(0)
		}
		os.Stderr.WriteString("virtiofsd: bad option\n")
		os.Exit(1)
	case "serve":
		if slices.Contains(os.Args[1:], "--help") {
			os.Stdout.WriteString("    -o source=PATH             shared directory tree\n")
			os.Exit(0)
		}
		if !slices.Contains(os.Args[1:], "--fd=3") {
			os.Exit(2)
		}
		ln, err := net.FileListener(os.NewFile(3, "listener"))
		if err != nil {
			os.Exit(3)
		}
		c, err := ln.Accept()
		if err != nil {
			os.Exit(4)
		}
		c.Write([]byte("hello"))
		time.Sleep(time.Minute)
	case "notvirtiofsd":
		os.Stdout.WriteString("usage: something else\n")
	}
	os.Exit(0)
}

func TestVirtioFSDArgs(t *testing.T) {
	c := strings.Join(VirtioFSDArgs(flavorC, "/run/kasa/shared/x"), " ")
	for _, want := range []string{"--fd=3", "-o source=/run/kasa/shared/x", "-o announce_submounts", "-o sandbox=namespace"} {
		if !strings.Contains(c, want) {
			t.Errorf("C args %q lack %q", c, want)
		}
	}
	r := strings.Join(VirtioFSDArgs(flavorRust, "/run/kasa/shared/x"), " ")
	for _, want := range []string{"--fd=3", "--shared-dir=/run/kasa/shared/x", "--announce-submounts", "--sandbox=namespace"} {
		if !strings.Contains(r, want) {
			t.Errorf("Rust args %q lack %q", r, want)
		}
	}
	st := Open("x", 0).GuestStorageVirtioFS()
	if st.GetFstype() != "virtiofs" || st.GetSource() != MountTag || st.GetMountPoint() != GuestRoot {
		t.Errorf("storage = %v", st)
	}
}

// StartVirtioFSD hands the daemon its listening socket and returns a
// connection the daemon serves; a daemon that dies says why through
// ExitError; a binary that is no virtiofsd is refused before it runs.
func TestStartVirtioFSD(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root: the share is bound on itself")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	s := &Share{SandboxID: "x", HostDir: t.TempDir()}
	t.Cleanup(func() { s.Destroy() })
	sock := filepath.Join(t.TempDir(), "vfs.sock")

	t.Setenv("KASA_FAKE_VIRTIOFSD", "serve")
	flavors.Clear()
	d, conn, err := s.StartVirtioFSD(context.Background(), self, sock, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	conn.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := conn.Read(buf); err != nil || string(buf) != "hello" {
		t.Fatalf("reading the daemon through the connection: %q, %v", buf, err)
	}
	conn.Close()
	if err := d.ExitError(); err != nil {
		t.Fatalf("running daemon has an exit error: %v", err)
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := d.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}

	t.Setenv("KASA_FAKE_VIRTIOFSD", "fail")
	flavors.Clear()
	d, conn, err = s.StartVirtioFSD(context.Background(), self, filepath.Join(t.TempDir(), "vfs.sock"), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	<-d.Done()
	if err := d.ExitError(); err == nil || !strings.Contains(err.Error(), "bad option") {
		t.Fatalf("a failing daemon: ExitError = %v, want its own message", err)
	}

	t.Setenv("KASA_FAKE_VIRTIOFSD", "notvirtiofsd")
	flavors.Clear()
	if _, _, err := s.StartVirtioFSD(context.Background(), self, sock+"3", 0, nil); err == nil || !strings.Contains(err.Error(), "does not look like virtiofsd") {
		t.Fatalf("a binary that is not virtiofsd: err = %v", err)
	}
	if _, _, err := s.StartVirtioFSD(context.Background(), "/nonexistent/virtiofsd", sock+"2", 0, nil); err == nil {
		t.Fatal("a missing daemon started")
	}
}

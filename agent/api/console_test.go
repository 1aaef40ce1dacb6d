package api

import (
	"bytes"
	"strings"
	"testing"
)

func TestConsoleFrames(t *testing.T) {
	var b bytes.Buffer
	b.Write(ConsoleHeader())
	long := bytes.Repeat([]byte("x"), MaxConsoleFramePayload+10)
	if err := WriteConsoleData(&b, long); err != nil {
		t.Fatal(err)
	}
	if err := WriteConsoleResize(&b, 40, 120); err != nil {
		t.Fatal(err)
	}
	hdr := make([]byte, ConsoleHeaderSize)
	b.Read(hdr)
	if err := CheckConsoleHeader(hdr); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, MaxConsoleFramePayload)
	var data []byte
	for range 2 {
		f, err := ReadConsoleFrame(&b, buf)
		if err != nil || f.Type != ConsoleData {
			t.Fatalf("frame %+v, %v", f.Type, err)
		}
		data = append(data, f.Payload...)
	}
	if !bytes.Equal(data, long) {
		t.Errorf("data split into frames does not join back: %d bytes", len(data))
	}
	f, err := ReadConsoleFrame(&b, buf)
	if rows, cols := f.Size(); err != nil || f.Type != ConsoleResize || rows != 40 || cols != 120 {
		t.Errorf("resize frame %c %d×%d, %v", f.Type, rows, cols, err)
	}
}

func TestConsoleFramesRefused(t *testing.T) {
	for name, in := range map[string][]byte{
		"unknown type":      {'X', 0, 1, 'a'},
		"oversized":         {'D', 0xff, 0xff},
		"resize of 3 bytes": {'W', 0, 3, 1, 2, 3},
	} {
		if _, err := ReadConsoleFrame(bytes.NewReader(in), make([]byte, MaxConsoleFramePayload)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	for _, h := range [][]byte{{'K', 'C', 2, 0}, {'K', 'P', 1, 0}, {'K', 'C', 1}} {
		if CheckConsoleHeader(h) == nil {
			t.Errorf("header %q accepted", h)
		}
	}
}

func TestGuestLogLines(t *testing.T) {
	line := FormatGuestLogLine(GuestLogKernel, LogWarning, "two\nlines")
	if string(line) != "k4 two lines\n" {
		t.Errorf("formatted %q", line)
	}
	src, level, text := ParseGuestLogLine(line[:len(line)-1])
	if src != GuestLogKernel || level != LogWarning || string(text) != "two lines" {
		t.Errorf("parsed %v %d %q", src, level, text)
	}
	if n := len(FormatGuestLogLine(GuestLogAgent, 99, strings.Repeat("y", 3*MaxGuestLogLine))); n != MaxGuestLogLine {
		t.Errorf("long line formatted to %d bytes, want %d", n, MaxGuestLogLine)
	}
	for _, raw := range []string{"", "a", "a9 nine", "x4 other source", "a4nospace"} {
		if src, level, text := ParseGuestLogLine([]byte(raw)); src != 0 || level != LogInfo || string(text) != raw {
			t.Errorf("%q parsed as %v %d %q, want it whole from the guest", raw, src, level, text)
		}
	}
}

func TestKernelParams(t *testing.T) {
	for cmdline, want := range map[string]bool{
		"quiet kasa.debug_console panic=1": true,
		"kasa.debug_console=1":             true,
		"kasa.debug_console=0":             false,
		"kasa.debug_consoles":              false,
		"quiet":                            false,
	} {
		if got := DebugConsoleFromCmdline(cmdline); got != want {
			t.Errorf("DebugConsoleFromCmdline(%q) = %v", cmdline, got)
		}
	}
	if got := GuestLogLevelFromCmdline("quiet kasa.log_level=debug"); got != "debug" {
		t.Errorf("log level %q", got)
	}
}

package restore

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/kasa-runtime/kasa/agent/api"
)

func TestIsTemplate(t *testing.T) {
	for cmdline, want := range map[string]bool{
		"console=ttyS0 kasa.template=1 quiet\n": true,
		"kasa.template=1":                       true,
		"console=ttyS0 quiet":                   false,
		"kasa.template=10":                      false,
		"xkasa.template=1":                      false,
	} {
		if got := IsTemplate(cmdline); got != want {
			t.Errorf("IsTemplate(%q) = %v", cmdline, got)
		}
	}
}

func TestAwaitKick(t *testing.T) {
	long := strings.Repeat("x", 3*maxKickLine) + api.CloneKickLine + "\n"
	for input, want := range map[string]bool{
		api.CloneKickLine + "\n":                  true,
		"\r\n" + api.CloneKickLine + "\r\n":       true,
		"noise\n" + api.CloneKickLine + "\n":      true,
		long:                                      false, // the tail of a long line is not a line
		long + api.CloneKickLine + "\n":           true,
		api.CloneKickLine:                         false, // no newline: the line is not finished
		"kasa-clone-not\n":                        false,
		strings.ToUpper(api.CloneKickLine) + "\n": false,
	} {
		err := awaitKick(context.Background(), strings.NewReader(input))
		if (err == nil) != want {
			t.Errorf("awaitKick(%.40q...) = %v, want kicked %v", input, err, want)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	r, w := io.Pipe()
	defer w.Close()
	cancel()
	if err := awaitKick(ctx, r); err == nil {
		t.Error("awaitKick returned nil after its context ended")
	}
}

package shimv2

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/containerd/log"
	"github.com/sirupsen/logrus"
)

func TestShimIDFromArgs(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"-namespace", "k8s.io", "-address", "/run/c.sock", "-id", "pod1", "start"}, "pod1"},
		{[]string{"--id=pod2", "-debug"}, "pod2"},
		{[]string{"-namespace", "id", "-publish-binary", "/x"}, ""},
		{[]string{"-id"}, ""},
		{[]string{"--", "-id", "x"}, ""},
		{nil, ""},
	} {
		if got := shimIDFromArgs(tt.args); got != tt.want {
			t.Errorf("shimIDFromArgs(%q) = %q, want %q", tt.args, got, tt.want)
		}
	}
}

// Lines logged without a logger in the context (request handlers) and with
// the shim's context both carry the sandbox id.
func TestTagLogsWithSandbox(t *testing.T) {
	oldL, oldOut := log.L, logrus.StandardLogger().Out
	t.Cleanup(func() { log.L = oldL; logrus.SetOutput(oldOut) })
	var buf bytes.Buffer
	logrus.SetOutput(&buf)
	ctx := tagLogsWithSandbox(context.Background(), "pod-abc")
	log.G(ctx).Warn("from the shim's context")
	log.G(context.Background()).Warn("from a request handler")
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if !strings.Contains(line, "sandbox=pod-abc") {
			t.Errorf("line without the sandbox id: %s", line)
		}
	}
	if n := strings.Count(buf.String(), "\n"); n != 2 {
		t.Errorf("%d lines logged, want 2: %s", n, buf.String())
	}
}

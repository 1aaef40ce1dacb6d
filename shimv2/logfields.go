package shimv2

import (
	"context"
	"strings"

	"github.com/containerd/log"
)

// shimIDFromArgs returns the value of the -id flag containerd (and CRI-O)
// start a shim with, "" when there is none. A shim serves one sandbox and
// its id is the sandbox's: the pod's sandbox container for CRI, the
// container for ctr run. The shim library parses the flag but keeps it to
// itself.
func shimIDFromArgs(args []string) string {
	for i, a := range args {
		if a == "--" {
			break
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || name != "id" {
			continue
		}
		if hasValue {
			return value
		}
		if i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// tagLogsWithSandbox makes every log line of this shim process carry the
// sandbox's id: those logged through ctx and those of request handlers and
// libraries, which log through the process-wide log.L.
func tagLogsWithSandbox(ctx context.Context, id string) context.Context {
	if id == "" {
		return ctx
	}
	log.L = log.L.WithField("sandbox", id)
	return log.WithLogger(ctx, log.G(ctx).WithField("sandbox", id))
}

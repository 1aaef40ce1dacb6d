package shimv2

import (
	"context"
	"sync"

	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/kasa-runtime/kasa/metrics"
	"github.com/kasa-runtime/kasa/virtcontainers"
)

// shimMetrics are the metrics of the shim's sandbox (metrics.Sandbox) and
// the endpoint that serves them on the sandbox's metrics socket. A nil
// *shimMetrics (no sandbox yet) records nothing.
type shimMetrics struct {
	m *metrics.Sandbox

	mu     sync.Mutex
	server *metrics.Server
}

// newShimMetrics starts the metrics of sandbox id before its start, so
// that the start's steps and its first RPCs are counted.
func newShimMetrics(id string, spec *specs.Spec) *shimMetrics {
	return &shimMetrics{m: metrics.NewSandbox(metrics.PodLabelsFor(id, spec.Annotations))}
}

// withMetrics has sc's start feed sm.
func (sm *shimMetrics) withMetrics(sc virtcontainers.SandboxConfig) virtcontainers.SandboxConfig {
	sc.Boot, sc.AgentObserver = sm.m.Boot(), sm.m
	return sc
}

// started counts the sandbox's start on the node (metrics.NodeRoot), and
// once it runs serves its metrics. err is the start's error; ctx its
// context, whose end makes a failure a cancellation.
func (sm *shimMetrics) started(ctx context.Context, sb *virtcontainers.Sandbox, err error) {
	if err != nil {
		recordStartFailure(ctx, startFailureReason(ctx, sm.m.Boot()))
		return
	}
	if rerr := metrics.RecordStart(sm.m.Boot().VMStart()); rerr != nil {
		log.G(ctx).WithError(rerr).Warn("counting the sandbox's start")
	}
	sm.m.Attach(sb)
	srv, serr := metrics.Serve(metrics.SocketPath(virtcontainers.SandboxStateRoot, sb.ID), sm.m.Registry())
	if serr != nil {
		log.G(ctx).WithError(serr).Warn("metrics of this sandbox unavailable")
		return
	}
	sm.mu.Lock()
	sm.server = srv
	sm.mu.Unlock()
}

// startFailureReason is the failure's label: the step of the start that
// failed; before the first, the configuration or the request.
func startFailureReason(ctx context.Context, boot *virtcontainers.BootRecord) string {
	if ctx.Err() != nil {
		return metrics.ReasonCancelled
	}
	if step := boot.Current(); step != "" {
		return string(step)
	}
	return metrics.ReasonConfig
}

func recordStartFailure(ctx context.Context, reason string) {
	if err := metrics.RecordStartFailure(reason); err != nil {
		log.G(ctx).WithError(err).Warn("counting the sandbox's failed start")
	}
}

// stopServing removes the metrics socket: the sandbox is going.
func (sm *shimMetrics) stopServing(ctx context.Context) {
	if sm == nil {
		return
	}
	sm.mu.Lock()
	srv := sm.server
	sm.server = nil
	sm.mu.Unlock()
	if err := srv.Close(); err != nil {
		log.G(ctx).WithError(err).Warn("closing the metrics socket")
	}
}

func (sm *shimMetrics) oom() {
	if sm != nil {
		sm.m.ContainerOOM()
	}
}

func (sm *shimMetrics) exit(status uint32) {
	if sm != nil {
		sm.m.ContainerExit(status)
	}
}

func (s *service) metricsNow() *shimMetrics {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.metrics
}

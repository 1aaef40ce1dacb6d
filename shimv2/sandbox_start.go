package shimv2

// The sandbox's start: the VM booted for the first container (Create),
// the configuration it is booted with, and Kill/Delete of a container
// whose Create is still under way.

import (
	"context"
	"fmt"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"

	"github.com/kasa-runtime/kasa/configuration"
	"github.com/kasa-runtime/kasa/metrics"
	"github.com/kasa-runtime/kasa/virtcontainers"
)

// ensureSandbox boots the VM when this shim has none yet. The boot runs
// without s.mu held; a Create of another container meanwhile waits for it.
// Cancelling ctx (Kill or Delete of the booting container, Shutdown)
// abandons the boot, which undoes itself.
func (s *service) ensureSandbox(ctx context.Context, r *taskAPI.CreateTaskRequest, spec *specs.Spec) error {
	for {
		s.mu.Lock()
		if s.sandbox != nil {
			id := s.sandboxID
			s.mu.Unlock()
			if sandboxIDOf(r.ID, spec) != id {
				return fmt.Errorf("container %s belongs to sandbox %s, this shim serves %s: %w", r.ID, sandboxIDOf(r.ID, spec), id, errdefs.ErrInvalidArgument)
			}
			return nil
		}
		if b := s.boot; b != nil {
			s.mu.Unlock()
			select {
			case <-b.done:
				continue
			case <-ctx.Done():
				return fmt.Errorf("container %s: waiting for the sandbox's boot: %w", r.ID, ctx.Err())
			}
		}
		if !isSandboxContainer(r.ID, spec) {
			s.mu.Unlock()
			return fmt.Errorf("container %s: its sandbox %s is not running in this shim: %w", r.ID, sandboxIDOf(r.ID, spec), errdefs.ErrFailedPrecondition)
		}
		b := &boot{id: r.ID, done: make(chan struct{})}
		s.boot = b
		needReaper := s.reaper == nil
		s.mu.Unlock()

		// Before the VM exists: whatever a dead shim leaves, its reaper
		// cleans up; and what dead shims left before, this one does.
		reap := reapOrphans
		go func() {
			if _, err := reap(context.WithoutCancel(ctx)); err != nil {
				log.G(ctx).WithError(err).Warn("reaping sandboxes of dead shims")
			}
		}()
		if needReaper {
			w, err := startReaper(r.ID)
			if err != nil {
				recordStartFailure(ctx, metrics.ReasonReaper)
				s.mu.Lock()
				s.boot = nil
				s.mu.Unlock()
				close(b.done)
				return fmt.Errorf("sandbox %s: %w", r.ID, err)
			}
			s.mu.Lock()
			s.reaper = w
			s.mu.Unlock()
		}

		sm := newShimMetrics(r.ID, spec)
		s.mu.Lock()
		s.metrics = sm
		s.mu.Unlock()
		cfg, err := loadConfig(ctx, r, spec)
		if err == nil {
			err = checkHostNamespaces(r.ID, spec, cfg)
		}
		var sb *virtcontainers.Sandbox
		if err == nil {
			sc := virtcontainers.SandboxConfig{ID: r.ID, Config: cfg, Hostname: spec.Hostname, NetNS: netnsPath(spec),
				PremountedRootfs: len(r.Rootfs) == 0}
			if spec.Linux != nil {
				sc.CgroupsPath = spec.Linux.CgroupsPath
			}
			sb, err = createSandbox(ctx, sm.withMetrics(sc))
		}
		if err == nil && ctx.Err() != nil {
			// Cancelled just as the boot ended: take it back.
			sb.Stop(context.WithoutCancel(ctx))
			err = fmt.Errorf("sandbox %s: boot cancelled: %w", r.ID, ctx.Err())
		}
		s.mu.Lock()
		s.boot = nil
		if err == nil {
			s.sandbox, s.sandboxID = sb, r.ID
		}
		s.mu.Unlock()
		close(b.done)
		sm.started(ctx, sb, err)
		if err != nil {
			return err
		}
		go s.watchSandbox(sb)
		go s.forwardOOM(sb)
		return nil
	}
}

// loadConfig reads the configuration (the runtime options' ConfigPath
// first), applies the pod's allowed annotation overrides and sizes the VM
// for the pod's limits.
func loadConfig(ctx context.Context, r *taskAPI.CreateTaskRequest, spec *specs.Spec) (*configuration.Config, error) {
	cfg, warnings, err := configuration.Load(configPathFromOptions(r))
	for _, w := range warnings {
		log.G(ctx).Warn(w.String())
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errdefs.ErrInvalidArgument, err)
	}
	file := cfg
	if cfg.Runtime.EnableDebug {
		logrus.SetLevel(logrus.DebugLevel)
	}
	cfg, err = cfg.ApplyAnnotations(spec.Annotations)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errdefs.ErrInvalidArgument, err)
	}
	if cfg, err = virtcontainers.SizeForPod(cfg, spec.Annotations); err != nil {
		return nil, fmt.Errorf("%w: %v", errdefs.ErrInvalidArgument, err)
	}
	if cfg.Factory.EnableTemplate && !virtcontainers.TemplateUsable(file, cfg) {
		log.G(ctx).Info("the pod's annotations or limits change its VM: it boots cold, without a template")
		cfg.Factory.EnableTemplate = false
	}
	return cfg, nil
}

// cancelCreate cancels the Create of container id if one is under way.
func (s *service) cancelCreate(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	cr := s.creating[id]
	if cr == nil {
		return false
	}
	cr.cancel()
	return true
}

// waitCreate waits for the Create of container id, if any, to end.
func (s *service) waitCreate(ctx context.Context, id string) error {
	s.mu.Lock()
	cr := s.creating[id]
	s.mu.Unlock()
	if cr == nil {
		return nil
	}
	select {
	case <-cr.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("container %s: waiting for its cancelled create: %w", id, ctx.Err())
	}
}

// netnsPath is the pod's network namespace named by the spec (CRI and
// `ctr run --with-ns network:PATH` set it), or "".
func netnsPath(s *specs.Spec) string {
	if s.Linux == nil {
		return ""
	}
	for _, n := range s.Linux.Namespaces {
		if n.Type == specs.NetworkNamespace {
			return n.Path
		}
	}
	return ""
}

// configPathFromOptions returns the ConfigPath of the runtime options
// containerd passes (CRI's `[...runtimes.kata.options] ConfigPath`), or "".
func configPathFromOptions(r *taskAPI.CreateTaskRequest) string {
	if r.Options == nil {
		return ""
	}
	v, err := typeurl.UnmarshalAny(r.Options)
	if err != nil {
		return ""
	}
	if o, ok := v.(*runtimeoptions.Options); ok {
		return o.ConfigPath
	}
	return ""
}

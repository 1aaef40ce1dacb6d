// Package server implements the agent's ttrpc service inside the guest.
package server

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/agent/internal/container"
	"github.com/kasa-runtime/kasa/agent/internal/sandbox"
	"github.com/kasa-runtime/kasa/agent/internal/transport"
	"github.com/kasa-runtime/kasa/version"
)

// Service answers the host. Methods of later capabilities come from
// unimplemented until they land.
type Service struct {
	unimplemented

	// PowerOff ends the guest; it runs after DestroySandbox has answered.
	PowerOff func(reason string)

	destroyOnce sync.Once
	// sysRoot and procRoot let tests point the guest probes elsewhere.
	sysRoot, procRoot string

	sandbox    *sandbox.Sandbox
	containers *container.Manager
	copyTarget sandbox.CopyTarget
}

var _ api.AgentServiceService = (*Service)(nil)

// Option configures the service.
type Option func(*options)

type options struct {
	spawner    container.Spawner
	containers container.Config
	copyTarget sandbox.CopyTarget
}

// WithSpawner gives the service the process reaper that container
// processes are started through; without one, container RPCs fail.
func WithSpawner(s container.Spawner) Option { return func(o *options) { o.spawner = s } }

// WithContainerConfig overrides where containers keep state and cgroups.
func WithContainerConfig(c container.Config) Option { return func(o *options) { o.containers = c } }

// WithCopyTarget overrides where CopyFile may write.
func WithCopyTarget(t sandbox.CopyTarget) Option { return func(o *options) { o.copyTarget = t } }

// New returns the guest's service; powerOff is called once on DestroySandbox.
func New(powerOff func(reason string), opts ...Option) *Service {
	o := options{containers: container.DefaultConfig(), copyTarget: sandbox.DefaultCopyTarget}
	for _, opt := range opts {
		opt(&o)
	}
	sb := sandbox.New()
	cc := o.containers
	cc.Spawner, cc.Storages = o.spawner, sb.Mounts
	return &Service{
		PowerOff: powerOff, sysRoot: "/sys", procRoot: "/proc",
		sandbox: sb, containers: container.NewManager(cc), copyTarget: o.copyTarget,
	}
}

func (s *Service) Check(ctx context.Context, _ *api.CheckRequest) (*api.CheckResponse, error) {
	return &api.CheckResponse{Status: api.CheckResponse_SERVING}, nil
}

func (s *Service) Version(ctx context.Context, _ *api.VersionRequest) (*api.VersionResponse, error) {
	return &api.VersionResponse{AgentVersion: version.Version, ApiVersion: api.APIVersion, GitCommit: version.Commit}, nil
}

func (s *Service) GetGuestDetails(ctx context.Context, _ *api.GetGuestDetailsRequest) (*api.GetGuestDetailsResponse, error) {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return nil, fmt.Errorf("uname: %w", err)
	}
	mem, err := s.meminfo()
	if err != nil {
		return nil, err
	}
	cmdline, _ := os.ReadFile(filepath.Join(s.procRoot, "cmdline"))
	var cpus unix.CPUSet
	if err := unix.SchedGetaffinity(0, &cpus); err != nil {
		return nil, fmt.Errorf("sched_getaffinity: %w", err)
	}
	resp := &api.GetGuestDetailsResponse{
		KernelRelease:     unix.ByteSliceToString(uts.Release[:]),
		KernelCmdline:     strings.TrimSpace(string(cmdline)),
		MemTotalBytes:     mem["MemTotal"],
		MemAvailableBytes: mem["MemAvailable"],
		OnlineCpus:        uint32(cpus.Count()),
		AgentVersion:      version.Version,
		ApiVersion:        api.APIVersion,
		Features:          s.features(),
		Arch:              unix.ByteSliceToString(uts.Machine[:]),
	}
	if b, err := os.ReadFile(filepath.Join(s.sysRoot, "devices/system/memory/block_size_bytes")); err == nil {
		resp.MemBlockSizeBytes, _ = strconv.ParseUint(strings.TrimSpace(string(b)), 16, 64)
	}
	return resp, nil
}

// meminfo returns /proc/meminfo's fields in bytes.
func (s *Service) meminfo() (map[string]uint64, error) {
	f, err := os.Open(filepath.Join(s.procRoot, "meminfo"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		v, err := strconv.ParseUint(fields[1], 10, 64)
		if err != nil {
			continue
		}
		if len(fields) == 3 && fields[2] == "kB" {
			v *= 1024
		}
		out[strings.TrimSuffix(fields[0], ":")] = v
	}
	return out, sc.Err()
}

func (s *Service) features() []string {
	var out []string
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }
	fs, _ := os.ReadFile(filepath.Join(s.procRoot, "filesystems"))
	hasFS := func(name string) bool {
		for _, line := range strings.Split(string(fs), "\n") {
			if f := strings.Fields(line); len(f) > 0 && f[len(f)-1] == name {
				return true
			}
		}
		return false
	}
	if transport.HasVsockDevice() {
		out = append(out, api.FeatureVsock)
	}
	if exists(filepath.Join(s.sysRoot, "class/virtio-ports")) {
		out = append(out, api.FeatureVirtioSerial)
	}
	if hasFS("9p") {
		out = append(out, api.Feature9P)
	}
	if hasFS("virtiofs") {
		out = append(out, api.FeatureVirtioFS)
	}
	if hasFS("overlay") {
		out = append(out, api.FeatureOverlay)
	}
	if exists(filepath.Join(s.procRoot, "sys/kernel/seccomp/actions_avail")) {
		out = append(out, api.FeatureSeccomp)
	}
	if exists(filepath.Join(s.sysRoot, "fs/cgroup/cgroup.controllers")) {
		out = append(out, api.FeatureCgroup2)
	}
	if exists(filepath.Join(s.sysRoot, "devices/system/memory/probe")) {
		out = append(out, api.FeatureMemHotplugProbe)
	}
	return out
}

func (s *Service) SetGuestDateTime(ctx context.Context, req *api.SetGuestDateTimeRequest) (*emptypb.Empty, error) {
	if req.GetTime() == nil {
		return nil, invalidArgument("SetGuestDateTime: time is required")
	}
	if err := req.GetTime().CheckValid(); err != nil {
		return nil, invalidArgument("SetGuestDateTime: %v", err)
	}
	ts := unix.NsecToTimespec(req.GetTime().AsTime().UnixNano())
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return nil, fmt.Errorf("set guest clock: %w", err)
	}
	log.G(ctx).WithField("time", req.GetTime().AsTime()).Debug("guest clock set")
	return &emptypb.Empty{}, nil
}

// DestroySandbox kills every container and unmounts every storage, then
// answers and powers the guest off right after, so the host sees the reply
// before the VM goes away. A teardown error is logged, not returned: the
// guest is going away either way.
func (s *Service) DestroySandbox(ctx context.Context, _ *api.DestroySandboxRequest) (*emptypb.Empty, error) {
	s.destroyOnce.Do(func() {
		log.G(ctx).Info("sandbox destroy requested")
		if err := s.containers.DestroyAll(ctx); err != nil {
			log.G(ctx).WithError(err).Warn("removing containers on DestroySandbox")
		}
		if err := s.sandbox.Destroy(ctx); err != nil {
			log.G(ctx).WithError(err).Warn("unmounting storages on DestroySandbox")
		}
		go s.PowerOff("DestroySandbox")
	})
	return &emptypb.Empty{}, nil
}

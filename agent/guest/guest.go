// Package guest is the agent's entry point inside the VM. Only cmd/kasa-agent
// imports it; everything it drives lives in agent/internal.
package guest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/mdlayher/vsock"
	"github.com/sirupsen/logrus"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/agent/internal/console"
	"github.com/kasa-runtime/kasa/agent/internal/guestlog"
	"github.com/kasa-runtime/kasa/agent/internal/pid1"
	"github.com/kasa-runtime/kasa/agent/internal/portforward"
	"github.com/kasa-runtime/kasa/agent/internal/restore"
	"github.com/kasa-runtime/kasa/agent/internal/server"
	"github.com/kasa-runtime/kasa/agent/internal/transport"
	"github.com/kasa-runtime/kasa/agent/internal/vsockecho"
	"github.com/kasa-runtime/kasa/version"
)

// transportWait bounds how long the agent waits for its devices to appear.
const transportWait = 5 * time.Second

// Main runs the agent. As PID 1 it never returns: a fatal error is logged to
// the console and the VM is powered off, because an exiting init panics the
// guest kernel.
func Main() {
	logger := logrus.New()
	logger.SetOutput(os.Stderr) // the console when we are init
	logger.SetFormatter(&logrus.TextFormatter{DisableTimestamp: false, FullTimestamp: true, DisableColors: true})
	if os.Getenv("KASA_AGENT_DEBUG") != "" {
		logger.SetLevel(logrus.DebugLevel)
	}
	// From the first line on, the log is queued for the host too
	// (guestlog); startGuestLog serves the queue once the devices are up.
	logQueue := guestlog.NewQueue()
	logger.AddHook(guestlog.NewHook(logQueue))
	ctx := log.WithLogger(context.Background(), logrus.NewEntry(logger).WithField("component", "kasa-agent"))

	if pid1.IsInit() {
		defer func() {
			if r := recover(); r != nil {
				pid1.PowerOff(ctx, fmt.Sprintf("agent panic: %v\n%s", r, debug.Stack()))
			}
		}()
	}
	err := run(ctx, logger, logQueue)
	if pid1.IsInit() {
		reason := "agent stopped"
		if err != nil {
			log.G(ctx).WithError(err).Error("agent failed")
			reason = err.Error()
		}
		pid1.PowerOff(ctx, reason)
	}
	if err != nil {
		log.G(ctx).WithError(err).Error("agent failed")
		os.Exit(1)
	}
}

func run(ctx context.Context, logger *logrus.Logger, logQueue *guestlog.Queue) error {
	if pid1.IsInit() {
		if err := pid1.MoveRootToTmpfs(); err != nil {
			return err
		}
		if err := pid1.MountEarly(); err != nil {
			return err
		}
		if err := pid1.LoadModules(ctx, pid1.ModuleList); err != nil {
			return err
		}
	}
	// Reap from the start: as init, every orphan of the guest is ours, and
	// container processes are our children in any case.
	reaper, err := pid1.StartReaper()
	if err != nil {
		return err
	}
	cmdline, _ := os.ReadFile("/proc/cmdline")
	debug := api.GuestLogLevelFromCmdline(string(cmdline)) == "debug"
	if debug {
		logger.SetLevel(logrus.DebugLevel)
	}
	log.G(ctx).WithField("version", version.Version).WithField("api", api.APIVersion).WithField("uptime", uptime()).Info("kasa-agent starting")

	if cmdline, _ := os.ReadFile("/proc/cmdline"); restore.IsTemplate(string(cmdline)) {
		// A template waits here, is saved, and every clone resumes here.
		if err := restore.AwaitClone(ctx, os.Stdin, transport.Present); err != nil {
			return err
		}
	}
	listeners, err := transport.Listen(ctx, transportWait)
	if err != nil {
		return err
	}
	startVsockEcho(ctx)
	startPortForward(ctx)
	startGuestLog(ctx, logger, logQueue, debug)
	startDebugConsole(ctx, string(cmdline), reaper)
	svc := server.New(func(reason string) {
		// Give the ttrpc reply to DestroySandbox time to leave the guest.
		time.Sleep(50 * time.Millisecond)
		if pid1.IsInit() {
			pid1.PowerOff(ctx, reason)
		}
		os.Exit(0)
	}, server.WithSpawner(reaper))
	srv, err := ttrpc.NewServer()
	if err != nil {
		return err
	}
	api.RegisterAgentServiceService(srv, svc)

	errc := make(chan error, len(listeners))
	for _, l := range listeners {
		go func(l net.Listener) { errc <- srv.Serve(ctx, l) }(l)
	}
	log.G(ctx).WithField("uptime", uptime()).Info("kasa-agent ready")
	err = <-errc
	if errors.Is(err, ttrpc.ErrServerClosed) {
		return nil
	}
	return err
}

// startVsockEcho runs the vsock test service when the kernel command line
// asks for it (kasa.vsock_echo=PORT); see agent/internal/vsockecho.
func startVsockEcho(ctx context.Context) {
	cmdline, _ := os.ReadFile("/proc/cmdline")
	port, err := vsockecho.PortFromCmdline(string(cmdline))
	if err != nil || port == 0 {
		if err != nil {
			log.G(ctx).WithError(err).Warn("vsock echo service not started")
		}
		return
	}
	if !transport.HasVsockDevice() {
		log.G(ctx).Warn(vsockecho.Param + " is set but the VM has no vsock device")
		return
	}
	l, err := vsock.Listen(port, nil)
	if err != nil {
		log.G(ctx).WithError(err).Warn("vsock echo service not started")
		return
	}
	log.G(ctx).WithField("port", port).Info("vsock echo service listening")
	go vsockecho.Serve(ctx, l)
}

// startPortForward runs the port-forward service on its vsock port
// (agent/internal/portforward). Without a vsock device there is none, and
// the host's forwarder has nothing to reach.
func startPortForward(ctx context.Context) {
	if !transport.HasVsockDevice() {
		return
	}
	l, err := vsock.Listen(api.PortForwardVsockPort, nil)
	if err != nil {
		log.G(ctx).WithError(err).Warn("port-forward service not started")
		return
	}
	log.G(ctx).WithField("port", api.PortForwardVsockPort).Info("port-forward service listening")
	go portforward.New().Serve(ctx, l)
}

// startGuestLog sends the agent's and the kernel's log to the host on its
// vsock port (agent/internal/guestlog). Without a vsock device the lines
// stay on the console only.
func startGuestLog(ctx context.Context, logger *logrus.Logger, q *guestlog.Queue, debug bool) {
	if !transport.HasVsockDevice() {
		logger.ReplaceHooks(logrus.LevelHooks{})
		return
	}
	guestlog.Start(ctx, q, debug, func() (net.Listener, error) { return vsock.Listen(api.GuestLogVsockPort, nil) })
}

// startDebugConsole serves shells for kasa exec (agent/internal/console),
// only when the host booted the VM with the console on.
func startDebugConsole(ctx context.Context, cmdline string, reaper *pid1.Reaper) {
	if !api.DebugConsoleFromCmdline(cmdline) {
		return
	}
	if !transport.HasVsockDevice() {
		log.G(ctx).Warn(api.DebugConsoleParam + " is set but the VM has no vsock device")
		return
	}
	l, err := vsock.Listen(api.DebugConsoleVsockPort, nil)
	if err != nil {
		log.G(ctx).WithError(err).Warn("debug console not started")
		return
	}
	log.G(ctx).WithField("port", api.DebugConsoleVsockPort).Warn("debug console listening: a root shell in this guest for kasa exec")
	go console.New(reaper).Serve(ctx, l)
}

// uptime is the guest's /proc/uptime, for boot timing on the console.
func uptime() string {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0] + "s"
}

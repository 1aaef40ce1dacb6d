package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/sirupsen/logrus"

	"github.com/kasa-runtime/kasa/metrics"
	"github.com/kasa-runtime/kasa/virtcontainers"
)

// monitor serves the node's metrics, and every shim's, over HTTP at
// --listen until SIGINT or SIGTERM.
func monitor(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("kasa monitor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:8090", "address to serve /metrics on")
	timeout := fs.Duration("shim-timeout", metrics.DefaultShimTimeout, "how long a shim may take to answer one scrape")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "kasa monitor: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *timeout <= 0 {
		fmt.Fprintln(stderr, "kasa monitor: --shim-timeout must be positive")
		return 2
	}
	m := metrics.NewMonitor(virtcontainers.SandboxStateRoot)
	m.ShimTimeout = *timeout
	m.ErrorLog = warnLog{}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(stderr, "kasa monitor: %v\n", err)
		return 1
	}
	mux := http.NewServeMux()
	mux.Handle(metrics.Path, m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	// The address, with the port the kernel chose for :0, for whoever
	// started the monitor.
	fmt.Fprintf(stdout, "kasa monitor: serving http://%s%s\n", l.Addr(), metrics.Path)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintf(stderr, "kasa monitor: %v\n", err)
		return 1
	}
	return 0
}

// warnLog logs what went wrong in a scrape (a shim that did not answer)
// as a warning, which `kasa` shows without --debug.
type warnLog struct{}

func (warnLog) Println(v ...any) { logrus.Warnln(v...) }

// printMetrics prints, once, what `kasa monitor` would serve, or with a
// sandbox id only that sandbox's series.
func printMetrics(args []string, stdout, stderr io.Writer) int {
	if len(args) > 1 {
		fmt.Fprintln(stderr, "kasa metrics: at most one sandbox id")
		return 2
	}
	m := metrics.NewMonitor(virtcontainers.SandboxStateRoot)
	families, err := m.Gather()
	if err != nil {
		logrus.Warn(err)
	}
	if len(args) == 1 {
		families = metrics.OfSandbox(families, args[0])
		if len(families) == 0 {
			fmt.Fprintf(stderr, "kasa metrics: sandbox %s: no metrics (not running on this node, or its shim did not answer)\n", args[0])
			return 1
		}
	}
	enc := expfmt.NewEncoder(stdout, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range families {
		if err := enc.Encode(mf); err != nil {
			fmt.Fprintf(stderr, "kasa metrics: %v\n", err)
			return 1
		}
	}
	return 0
}

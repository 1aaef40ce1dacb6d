package metrics

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// SocketName is the shim's metrics socket in its sandbox's state directory
// (virtcontainers.SandboxStateRoot/<id>/): HTTP, GET /metrics, root only.
const SocketName = "metrics.sock"

// SocketPath is sandbox id's metrics socket under stateRoot.
func SocketPath(stateRoot, id string) string { return filepath.Join(stateRoot, id, SocketName) }

// Path is the only path the shim's endpoint answers.
const Path = "/metrics"

// Server is a shim's metrics endpoint.
type Server struct {
	path string
	srv  *http.Server
	done chan struct{}
}

// Serve serves g over HTTP on a new unix socket at path (mode 0600). The
// directory must exist; a stale socket there (a dead shim's) is replaced.
func Serve(path string, g prometheus.Gatherer) (*Server, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("metrics socket %s: %w", path, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("metrics socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("metrics socket %s: %w", path, err)
	}
	mux := http.NewServeMux()
	mux.Handle(Path, promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError, MaxRequestsInFlight: 2,
	}))
	s := &Server{path: path, done: make(chan struct{}),
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second}}
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(l)
	}()
	return s, nil
}

// Close stops serving and removes the socket. A nil *Server does nothing.
func (s *Server) Close() error {
	if s == nil {
		return nil
	}
	err := s.srv.Close() // closes the listener, which unlinks the socket
	<-s.done
	if rerr := os.Remove(s.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		err = errors.Join(err, rerr)
	}
	return err
}

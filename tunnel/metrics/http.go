package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry returns a registry holding cs plus the Go runtime and
// process collectors (go_…, process_…: heap, goroutines, open files).
// It panics if two collectors export the same metric, a programming error.
func NewRegistry(cs ...prometheus.Collector) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(cs...)
	return reg
}

// Handler serves:
//
//	/metrics  the registry g in the Prometheus text (or negotiated) format
//	/healthz  200 "ok" while the process runs (liveness)
//	/readyz   200 "ok" when ready returns nil, else 503 with its error
//	          (readiness); a nil ready is always ready
//
// Anything else is 404.
func Handler(g prometheus.Gatherer, ready func() error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if ready != nil {
			if err := ready(); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintf(w, "%v\n", err)
				return
			}
		}
		io.WriteString(w, "ok\n")
	})
	return mux
}

// Server is a running metrics listener; see Listen.
type Server struct {
	ln   net.Listener
	hs   *http.Server
	done chan struct{}
	once sync.Once
	err  error
}

// IsLoopback reports whether the HOST of a HOST:PORT address is
// "localhost" or a loopback IP; an empty host (all interfaces) is not.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Listen serves h on the TCP address addr (HOST:PORT) until Close. An
// address that is not loopback is served, with a warning on log: the
// metrics name the server's version and counters, and operators often
// want them scraped from another host (a Kubernetes probe, Prometheus).
// A nil log is silent.
func Listen(addr string, h http.Handler, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, fmt.Errorf("metrics address %q: expected HOST:PORT like 127.0.0.1:9090", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	if !IsLoopback(addr) {
		log.Warn("metrics and health endpoints are reachable from other hosts; use a loopback address or a firewall unless that is intended", "addr", ln.Addr())
	}
	s := &Server{
		ln:   ln,
		hs:   &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)},
		done: make(chan struct{}),
	}
	log.Info("metrics listener", "addr", ln.Addr(), "paths", "/metrics /healthz /readyz")
	go func() {
		defer close(s.done)
		if err := s.hs.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics listener failed", "err", err)
		}
	}()
	return s, nil
}

// Addr returns the listening address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Close stops the listener, waits up to a second for requests in flight,
// then closes their connections. It is idempotent.
func (s *Server) Close() error {
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := s.hs.Shutdown(ctx); err != nil {
			s.err = s.hs.Close()
		}
		<-s.done
	})
	return s.err
}

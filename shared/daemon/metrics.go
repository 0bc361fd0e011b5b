package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func registerProcessMetrics(reg *prometheus.Registry, name, version string) {
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "ccm_build_info",
			Help:        "Always 1; labels carry the binary and its version.",
			ConstLabels: prometheus.Labels{"binary": name, "version": version},
		}, func() float64 { return 1 }),
	)
}

// HTTPEndpoints is a daemon that serves more than /metrics and /healthz
// on its metrics address (ccm-elector's load-balancer checks).
type HTTPEndpoints interface {
	AddHTTP(mux *http.ServeMux)
}

// serveMetrics serves /metrics and /healthz, and the daemon's own
// endpoints, on addr until ctx is done.
func serveMetrics(ctx context.Context, addr string, reg *prometheus.Registry, d Daemon, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if err := d.Healthy(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	if h, ok := d.(HTTPEndpoints); ok {
		h.AddHTTP(mux)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics listen %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	log.Info("serving metrics", "addr", ln.Addr().String())
	go func() {
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(shut)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics server: %w", err)
	}
	return nil
}

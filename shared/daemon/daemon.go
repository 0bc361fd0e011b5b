// Package daemon is the service runtime shared by every ccm daemon: flags and
// configuration, logging, the NATS connection (and JetStream on it, and the
// node's role events), the micro service with its
// status endpoint, sd_notify readiness and watchdog, and Prometheus metrics,
// all owned by one errgroup.
package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/convex-cluster-manager/ccm/shared/buildinfo"
	"github.com/convex-cluster-manager/ccm/shared/config"
	"github.com/convex-cluster-manager/ccm/shared/natsconn"
	"github.com/convex-cluster-manager/ccm/shared/rolewatch"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// Daemon is the job of one ccm binary.
type Daemon interface {
	// Run does the job until ctx is cancelled.
	Run(ctx context.Context) error
	// Ready is closed once the daemon can do its job (sd_notify READY=1).
	Ready() <-chan struct{}
	// Healthy returns nil while the daemon works; the watchdog is fed only then.
	Healthy() error
	// Status is the reply of the status endpoint.
	Status() any
	// StatusLine is a one-line summary for systemctl status.
	StatusLine() string
	// AddEndpoints adds the daemon's own micro endpoints to its group.
	AddEndpoints(g micro.Group) error
}

// Env is what the runtime gives a daemon.
type Env struct {
	Name    string
	Version string
	Config  config.Config
	Log     *slog.Logger
	NC      *nats.Conn
	JS      jetstream.JetStream // on NC
	Metrics prometheus.Registerer
}

// Roles subscribes to the cluster's role events for this node; the caller
// closes the tracker.
func (e Env) Roles() (*rolewatch.Tracker, error) {
	return rolewatch.Subscribe(e.NC, e.Config.ClusterID, e.Config.NodeID, e.Config.Election.LeaderTTL(), e.Log)
}

// Spec describes a daemon binary.
type Spec struct {
	Name        string // binary and micro service name, e.g. "ccm-elector"
	Description string
	MetricsAddr string // default -metrics-addr; "" disables metrics
	// MemoryLimit is the soft memory limit of the Go runtime in bytes (0:
	// none), for daemons whose garbage grows with the data they move.
	MemoryLimit int64
	New         func(Env) (Daemon, error)
	// Cleanup, if set, undoes what the daemon holds on the node (the
	// binary's -cleanup flag: the unit's ExecStopPost, which runs after
	// any exit, a watchdog kill included). Env has no NATS connection.
	Cleanup func(ctx context.Context, env Env) error
}

// Main runs the daemon described by spec with command-line args until ctx is
// cancelled. It returns flag.ErrHelp for -h, prints the version to stdout
// for -version, and wraps errors in the flags, environment or
// configuration file in ErrConfig.
func Main(ctx context.Context, spec Spec, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(spec.Name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		logLevel    = fs.String("log-level", "info", "log level: debug, info, warn, error")
		logFormat   = fs.String("log-format", "text", "log format: text or json")
		metricsAddr = fs.String("metrics-addr", spec.MetricsAddr, "listen address for /metrics and /healthz (empty: off)")
		version     = fs.Bool("version", false, "print the version and exit")
	)
	var cleanup *bool
	if spec.Cleanup != nil {
		cleanup = fs.Bool("cleanup", false, "undo what the daemon holds on this node and exit (ExecStopPost)")
	}
	flags := config.Bind(fs)
	cfg, err := flags.Parse(args)
	if *version && (err == nil || !errors.Is(err, flag.ErrHelp)) {
		// Before the configuration is checked: a node without one has a version too.
		_, werr := fmt.Fprintf(stdout, "%s %s\n", spec.Name, buildinfo.Version())
		return werr
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	log, err := NewLogger(stderr, *logLevel, *logFormat)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	log = log.With("service", spec.Name, "cluster", cfg.ClusterID, "node", cfg.NodeID)
	if cleanup != nil && *cleanup {
		return spec.Cleanup(ctx, Env{Name: spec.Name, Version: buildinfo.Version(), Config: cfg, Log: log})
	}
	return Run(ctx, spec, cfg, log, *metricsAddr)
}

// Run runs the daemon with an already parsed configuration; tests call it
// in-process and stop it by cancelling ctx.
func Run(ctx context.Context, spec Spec, cfg config.Config, log *slog.Logger, metricsAddr string) (err error) {
	version := buildinfo.Version()
	nc, err := natsconn.Daemon(cfg.NATS, fmt.Sprintf("%s@%s", spec.Name, cfg.NodeID), log)
	if err != nil {
		return err
	}
	defer nc.Close()

	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	reg := prometheus.NewRegistry()
	registerProcessMetrics(reg, spec.Name, version)
	d, err := spec.New(Env{Name: spec.Name, Version: version, Config: cfg, Log: log, NC: nc, JS: js, Metrics: reg})
	if err != nil {
		return fmt.Errorf("init %s: %w", spec.Name, err)
	}

	svc, err := micro.AddService(nc, micro.Config{
		Name:        spec.Name,
		Version:     version,
		Description: fmt.Sprintf("%s (cluster %s, node %s)", spec.Description, cfg.ClusterID, cfg.NodeID),
		Metadata:    map[string]string{"cluster": cfg.ClusterID, "node": cfg.NodeID},
	})
	if err != nil {
		return fmt.Errorf("register micro service: %w", err)
	}
	defer svc.Stop()
	g := svc.AddGroup(schema.EndpointGroup(cfg.ClusterID, cfg.NodeID, spec.Name))
	if err := g.AddEndpoint(schema.VerbStatus, statusHandler(d)); err != nil {
		return fmt.Errorf("add status endpoint: %w", err)
	}
	if err := d.AddEndpoints(g); err != nil {
		return fmt.Errorf("add endpoints: %w", err)
	}

	log.Info("starting", "version", version)
	defer notify(log, "STOPPING=1")
	eg, ctx := errgroup.WithContext(ctx)
	eg.Go(func() error { return d.Run(ctx) })
	eg.Go(func() error { return supervise(ctx, d, log) })
	eg.Go(func() error { return natsconn.ReturnHome(ctx, nc, cfg.NATS, log) })
	if metricsAddr != "" {
		eg.Go(func() error { return serveMetrics(ctx, metricsAddr, reg, d, log) })
	}
	err = eg.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	log.Info("stopped", "err", err)
	return err
}

// Package daemontest runs ccm daemons in-process for tests, under the real
// daemon runtime (NATS connection, micro service, endpoints).
package daemontest

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/convex-cluster-manager/ccm/shared/config"
	"github.com/convex-cluster-manager/ccm/shared/daemon"
)

// Running is a daemon started by Start.
type Running[D daemon.Daemon] struct {
	D      D
	cancel context.CancelFunc
	done   chan struct{}
}

// Stop stops the daemon like a SIGKILL would as far as NATS state goes:
// nothing is released on the way out beyond what the daemon does on stop.
func (r *Running[D]) Stop() {
	r.cancel()
	<-r.done
}

// Logger discards logs unless CCM_TEST_LOG is set.
func Logger() *slog.Logger {
	if os.Getenv("CCM_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// Start runs the daemon of spec with cfg until the test ends, and waits
// until it is ready.
func Start[D daemon.Daemon](t testing.TB, spec daemon.Spec, cfg config.Config) *Running[D] {
	t.Helper()
	r := &Running[D]{done: make(chan struct{})}
	runErr := make(chan error, 1)
	got := make(chan D, 1)
	newFn := spec.New
	spec.New = func(env daemon.Env) (daemon.Daemon, error) {
		d, err := newFn(env)
		if err == nil {
			got <- d.(D)
		}
		return d, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() {
		defer close(r.done)
		runErr <- daemon.Run(ctx, spec, cfg, Logger().With("node", cfg.NodeID, "service", spec.Name), "")
	}()
	select {
	case r.D = <-got:
	case err := <-runErr:
		t.Fatalf("%s on %s: %v", spec.Name, cfg.NodeID, err)
	case <-time.After(10 * time.Second):
		t.Fatalf("%s on %s did not start", spec.Name, cfg.NodeID)
	}
	select {
	case <-r.D.Ready():
	case <-time.After(20 * time.Second):
		t.Fatalf("%s on %s not ready", spec.Name, cfg.NodeID)
	}
	t.Cleanup(r.Stop)
	return r
}

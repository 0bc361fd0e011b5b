// Package electortest runs real ccm-electors in-process for tests, under
// the daemon runtime and against a real NATS server.
package electortest

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/convex-cluster-manager/ccm/services/elector"
	"github.com/convex-cluster-manager/ccm/shared/config"
	"github.com/convex-cluster-manager/ccm/shared/daemon"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// Lease timings for tests: short, but with the same proportions as the defaults.
const (
	TTL       = 2000 * time.Millisecond
	Heartbeat = 500 * time.Millisecond
	Margin    = 500 * time.Millisecond
)

// Node is one elector running in-process.
type Node struct {
	ID     string
	El     *elector.Elector
	cancel context.CancelFunc
	done   chan struct{} // closed when the elector has returned
}

// Stop kills the elector without releasing its key, like kill -9.
func (n *Node) Stop() {
	n.cancel()
	<-n.done
}

// Config returns a valid configuration with the test lease timings.
func Config(cluster, id string, servers ...string) config.Config {
	c := config.Default()
	c.ClusterID, c.NodeID = cluster, id
	c.NATS.Servers = servers
	c.Election = config.Election{
		LeaderTTLMs:         int(TTL.Milliseconds()),
		HeartbeatIntervalMs: int(Heartbeat.Milliseconds()),
		SafetyMarginMs:      int(Margin.Milliseconds()),
	}
	return c
}

// Logger discards logs unless CCM_TEST_LOG is set.
func Logger() *slog.Logger {
	if os.Getenv("CCM_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// Start runs an elector for cfg until the test ends and waits until it is ready.
func Start(t testing.TB, cfg config.Config) *Node {
	t.Helper()
	n := &Node{ID: cfg.NodeID, done: make(chan struct{})}
	runErr := make(chan error, 1)
	got := make(chan *elector.Elector, 1)
	spec := elector.Spec()
	spec.New = func(env daemon.Env) (daemon.Daemon, error) {
		e, err := elector.New(env)
		if err == nil {
			got <- e
		}
		return e, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	go func() {
		defer close(n.done)
		runErr <- daemon.Run(ctx, spec, cfg, Logger().With("node", cfg.NodeID), "")
	}()
	select {
	case n.El = <-got:
	case err := <-runErr:
		t.Fatalf("elector %s: %v", cfg.NodeID, err)
	case <-time.After(10 * time.Second):
		t.Fatalf("elector %s did not start", cfg.NodeID)
	}
	select {
	case <-n.El.Ready():
	case <-time.After(10 * time.Second):
		t.Fatalf("elector %s not ready", cfg.NodeID)
	}
	t.Cleanup(n.Stop)
	return n
}

// Leaders returns the nodes whose elector says leader.
func Leaders(nodes []*Node) []*Node {
	var out []*Node
	for _, n := range nodes {
		if n.El.State().Role == schema.RoleLeader {
			out = append(out, n)
		}
	}
	return out
}

// WaitLeader waits until exactly one of nodes leads and returns it; two
// leaders at once fail the test.
func WaitLeader(t testing.TB, nodes []*Node, within time.Duration) *Node {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if ls := Leaders(nodes); len(ls) == 1 {
			return ls[0]
		} else if len(ls) > 1 {
			t.Fatalf("%d leaders at once: %s and %s", len(ls), ls[0].ID, ls[1].ID)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no leader within %s", within)
	return nil
}

// Others returns nodes without not.
func Others(nodes []*Node, not *Node) []*Node {
	var out []*Node
	for _, n := range nodes {
		if n != not {
			out = append(out, n)
		}
	}
	return out
}

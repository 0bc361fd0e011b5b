// Package electortest runs real ccm-electors in-process for tests, under
// the daemon runtime and against a real NATS server.
package electortest

import (
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/convex-cluster-manager/ccm/services/elector"
	"github.com/convex-cluster-manager/ccm/shared/config"
	"github.com/convex-cluster-manager/ccm/shared/daemon/daemontest"
	"github.com/convex-cluster-manager/ccm/shared/schema"
	"github.com/convex-cluster-manager/ccm/shared/waitfor"
)

// Lease timings for tests: short, but with the same proportions as the
// defaults; longer (Scale) under the race detector, which slows everything
// several times on a loaded machine.
const (
	TTL       = 2000 * time.Millisecond * Scale
	Heartbeat = 500 * time.Millisecond * Scale
	Margin    = 500 * time.Millisecond * Scale
)

// Node is one elector running in-process.
type Node struct {
	ID string
	El *elector.Elector
	r  *daemontest.Running[*elector.Elector]
}

// Stop kills the elector without releasing its key, like kill -9.
func (n *Node) Stop() { n.r.Stop() }

// Config returns a valid configuration with the test lease timings.
func Config(cluster, id string, servers ...string) config.Config {
	c := config.Default()
	c.ClusterID, c.NodeID = cluster, id
	c.NATS.Servers = servers
	c.Election.LeaderTTLMs = int(TTL.Milliseconds())
	c.Election.HeartbeatIntervalMs = int(Heartbeat.Milliseconds())
	c.Election.SafetyMarginMs = int(Margin.Milliseconds())
	return c
}

// Logger discards logs unless CCM_TEST_LOG is set.
func Logger() *slog.Logger { return daemontest.Logger() }

// Start runs an elector for cfg until the test ends and waits until it is ready.
func Start(t testing.TB, cfg config.Config) *Node {
	t.Helper()
	r := daemontest.Start[*elector.Elector](t, elector.Spec(), cfg)
	return &Node{ID: cfg.NodeID, El: r.D, r: r}
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
	var leader *Node
	waitfor.Poll(t, within, 5*time.Millisecond, func() error {
		switch ls := Leaders(nodes); {
		case len(ls) > 1:
			t.Fatalf("%d leaders at once: %s and %s", len(ls), ls[0].ID, ls[1].ID)
		case len(ls) == 1:
			leader = ls[0]
			return nil
		}
		return errors.New("no leader")
	})
	return leader
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

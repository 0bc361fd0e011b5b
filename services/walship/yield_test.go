package walship

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/shared/config"
	"github.com/convex-cluster-manager/ccm/shared/daemon/daemontest"
	"github.com/convex-cluster-manager/ccm/shared/natstest"
	"github.com/convex-cluster-manager/ccm/shared/rolewatch"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// TestYieldToLease: a large file's next chunk waits while the node's
// lease has less than half left, goes on as soon as a renewal arrives,
// and does not wait past the lease's end (the append's fence decides).
func TestYieldToLease(t *testing.T) {
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv.ClientURL())
	cfg := config.Default()
	cfg.ClusterID, cfg.NodeID = "dc", "n1"
	cfg.Election.LeaderTTLMs, cfg.Election.SafetyMarginMs = 2000, 500 // lease 1.5 s, half 0.75 s
	roles, err := rolewatch.Subscribe(nc, "dc", "n1", cfg.Election.LeaderTTL(), daemontest.Logger())
	require.NoError(t, err)
	defer roles.Close()
	d := &Daemon{cfg: cfg, roles: roles, log: daemontest.Logger()}
	lease := func(left time.Duration) {
		roles.Observe(schema.RoleEvent{Cluster: "dc", Node: "n1", Role: schema.RoleLeader, Epoch: 5, Prepared: true, Ready: true,
			Deadline: time.Now().Add(left), DeadlineBoot: int64(rolewatch.BootTime() + left)})
	}
	yield := func() <-chan time.Duration {
		done := make(chan time.Duration, 1)
		start := time.Now()
		go func() {
			if err := d.yieldToLease(context.Background()); err != nil {
				t.Error(err)
			}
			done <- time.Since(start)
		}()
		return done
	}

	lease(1400 * time.Millisecond)
	if took := <-yield(); took > 100*time.Millisecond {
		t.Fatalf("with most of the lease left, a chunk waited %s", took)
	}

	lease(600 * time.Millisecond) // a renewal is late
	done := yield()
	select {
	case took := <-done:
		t.Fatalf("with %s of the lease left, a chunk went on after %s", 600*time.Millisecond, took)
	case <-time.After(300 * time.Millisecond):
	}
	lease(1400 * time.Millisecond) // renewed
	select {
	case <-done:
	case <-time.After(200 * time.Millisecond):
		t.Fatal("a chunk still waits after the lease was renewed")
	}

	lease(300 * time.Millisecond) // and never renewed again
	select {
	case took := <-yield():
		if took < 250*time.Millisecond {
			t.Fatalf("a chunk went on after %s with the renewal late", took)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("a chunk still waits after the lease ended")
	}
}

package elector_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/services/elector"
	"github.com/convex-cluster-manager/ccm/shared/natsconn"
	"github.com/convex-cluster-manager/ccm/shared/schema"
	"github.com/convex-cluster-manager/ccm/shared/waitfor"
)

// TestPausedClusterDoesNotFailOver: in maintenance mode the leader keeps
// serving, an automatic demotion (ccm-backend's) is refused, and when the
// leader dies nobody campaigns; the operator's promote still works; after
// resume the cluster fails over by itself again.
func TestPausedClusterDoesNotFailOver(t *testing.T) {
	c := startCluster(t, 3)
	l := waitLeader(t, c.nodes, testTTL)
	ctx := context.Background()
	js, err := jetstream.New(c.nc)
	require.NoError(t, err)
	settings, err := js.KeyValue(ctx, schema.SettingsBucket(c.name))
	require.NoError(t, err)
	setPause := func(paused bool, nodes []*node) {
		t.Helper()
		b, _ := json.Marshal(schema.PauseRecord{Paused: paused, At: time.Now(), By: "test"})
		_, err := settings.Put(ctx, schema.KeyPause, b)
		require.NoError(t, err)
		waitfor.Cond(t, 2*testHeartbeat, func() error {
			for _, n := range nodes {
				if st := n.El.Status().(elector.Status); st.Paused != paused {
					return fmt.Errorf("%s: paused=%v, want %v", n.ID, st.Paused, paused)
				}
			}
			return nil
		})
	}
	setPause(true, c.nodes)

	_, err = natsconn.Call(ctx, c.nc, c.name, l.ID, schema.ServiceElector, schema.VerbDemote, schema.DemoteRequest{Automatic: true}, 5*time.Second)
	if !natsconn.HasCode(err, natsconn.CodeRefused) {
		t.Fatalf("automatic demotion while paused: %v, want refused", err)
	}
	if s := l.El.State(); s.Role != schema.RoleLeader {
		t.Fatalf("the leader stepped down while paused: %+v", s)
	}

	l.Stop()
	rest := others(c.nodes, l)
	for end := time.Now().Add(2*testTTL + testHeartbeat); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if ls := leaders(rest); len(ls) > 0 {
			t.Fatalf("%s campaigned in a paused cluster", ls[0].ID)
		}
	}

	require.NoError(t, rest[0].El.Promote(ctx), "ccm promote in a paused cluster")
	if got := waitLeader(t, rest, testTTL); got != rest[0] {
		t.Fatalf("leader after promote: %s, want %s", got.ID, rest[0].ID)
	}

	setPause(false, rest)
	rest[0].Stop()
	if got := waitLeader(t, rest[1:], 2*testTTL); got != rest[1] {
		t.Fatalf("after resume: leader %s, want %s", got.ID, rest[1].ID)
	}
}

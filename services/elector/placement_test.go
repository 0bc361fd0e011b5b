package elector_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/convex-cluster-manager/ccm/services/elector"
	et "github.com/convex-cluster-manager/ccm/services/elector/electortest"
	"github.com/convex-cluster-manager/ccm/shared/natstest"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// TestStreamLeadersMoveOffTheLeadersServer: on a three-server NATS
// cluster, the serving leader hands the raft leadership of the lease
// bucket's stream, when its own server holds it, to a peer that has been
// current long enough, so that a crash of its node needs no JetStream
// election before another node can take the lease.
func TestStreamLeadersMoveOffTheLeadersServer(t *testing.T) {
	defer elector.SetPlacementTimings(200*time.Millisecond, time.Second)()
	srvs := natstest.Cluster(t, 3)
	cfg := et.Config("dc", "n1", srvs[0].ClientURL())
	cfg.NATS.Replicas = 3
	n1 := et.Start(t, cfg)
	et.WaitLeader(t, []*et.Node{n1}, 10*et.TTL)
	nc := natstest.Connect(t, srvs[1].ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream := "KV_" + schema.Bucket("dc")
	leader := func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s, err := js.Stream(ctx, stream)
		if err != nil {
			return ""
		}
		info, err := s.Info(ctx)
		if err != nil || info.Cluster == nil {
			return ""
		}
		return info.Cluster.Leader
	}
	// Put the lease's stream leader on n1's own server (s1), as an
	// election may.
	for deadline := time.Now().Add(20 * time.Second); leader() != "s1"; time.Sleep(300 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("could not make s1 lead %s (leader %q)", stream, leader())
		}
		body, _ := json.Marshal(map[string]any{"placement": map[string]string{"preferred": "s1"}})
		nc.Request("$JS.API.STREAM.LEADER.STEPDOWN."+stream, body, 2*time.Second)
	}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if l := leader(); l != "" && l != "s1" {
			t.Logf("%s moved from s1 to %s", stream, l)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still led by s1, the leader node's own server, after 15 s", stream)
		}
	}
	if s := n1.El.State(); s.Role != schema.RoleLeader || !s.Ready {
		t.Fatalf("n1 is %s (ready %v) after its stream leader moved, want the serving leader", s.Role, s.Ready)
	}
}

package walapply_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	et "github.com/convex-cluster-manager/ccm/services/elector/electortest"
	"github.com/convex-cluster-manager/ccm/services/walapply"
	"github.com/convex-cluster-manager/ccm/services/walship"
	"github.com/convex-cluster-manager/ccm/shared/daemon/daemontest"
	"github.com/convex-cluster-manager/ccm/shared/natstest"
	"github.com/convex-cluster-manager/ccm/shared/replica"
	"github.com/convex-cluster-manager/ccm/shared/schema"
	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

// TestDrainOutlivesItsConsumersServer: a passive's consumer of the WAL
// stream sits on a server that goes away (as when a partition cuts it
// off) while the stream itself goes on with the others, and the node then
// wins the lease. The consumer would notice only after two missed
// heartbeats (10 s) and then recreate itself; the promotion's drain must
// not wait for that (30 s seen in the failover bench): it follows again
// with a new consumer. And it must follow at all: a leader-elect's
// walapply stopped following, so a drain whose target had not arrived
// when the node won waited until it timed out (CI, a leader cut from
// NATS).
func TestDrainOutlivesItsConsumersServer(t *testing.T) {
	t.Run("passive", func(t *testing.T) { drainAfterLostServer(t, false) })
	t.Run("leader-elect", func(t *testing.T) { drainAfterLostServer(t, true) })
}

func drainAfterLostServer(t *testing.T, wins bool) {
	srvs := natstest.Cluster(t, 3)
	dir := t.TempDir()
	c1 := nodeConfig(t, dir, "n1", srvs[0].ClientURL())
	c2 := nodeConfig(t, dir, "n2", srvs[0].ClientURL())
	c1.NATS.Replicas, c2.NATS.Replicas = 3, 3
	createDocs(t, c1.Backend.DBPath())
	n1 := et.Start(t, c1)
	et.WaitLeader(t, []*et.Node{n1}, 10*et.TTL)
	// n2 runs no elector: the test says when it wins.
	ws := daemontest.Start[*walship.Daemon](t, walship.Spec(), c1)
	waitShipping(t, ws, func() bool { return true })
	w := openDB(t, writerDSN(c1.Backend.DBPath()))
	defer w.Close()
	workload(t, w, 200, 1)

	nc := natstest.Connect(t, srvs[0].ClientURL())
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	// Start n2's walapply until its consumer sits on a server other than
	// the one it is connected to (placement is random among the peers).
	var ap2 *daemontest.Running[*walapply.Daemon]
	var host string
	for try := 0; host == "" || host == "s1"; try++ {
		if try == 10 {
			t.Fatal("n2's consumer on s1 ten times in a row")
		}
		if ap2 != nil {
			ap2.Stop()
			natstest.DeleteConsumers(t, js, walstream.Stream("dc"))
		}
		ap2 = daemontest.Start[*walapply.Daemon](t, walapply.Spec(), c2)
		host = natstest.ConsumerServer(t, js, walstream.Stream("dc"))
	}
	t.Logf("n2's consumer is on %s: shutting it down", host)
	natstest.Shutdown(t, srvs, host)
	workload(t, w, 200, 2)
	flushed := request[schema.FlushReply](t, nc, schema.Endpoint("dc", "n1", schema.ServiceWalship, "flush"))
	if wins {
		// n2 wins the lease, as its elector would announce it before draining.
		won, _ := json.Marshal(schema.RoleEvent{Cluster: "dc", Node: "n2", Role: schema.RoleLeader, Epoch: natstest.TakeLeaderKey(t, nc, "dc", "n2"),
			Deadline: time.Now().Add(time.Minute), At: time.Now()})
		require.NoError(t, nc.Publish(schema.RoleSubject("dc", "n2"), won))
		nc.Flush()
		time.Sleep(100 * time.Millisecond)
	}

	start := time.Now()
	msg, err := nc.Request(schema.Endpoint("dc", "n2", schema.ServiceWalapply, "drain"), nil, 8*time.Second)
	if err != nil {
		t.Fatalf("drain of n2 without an answer after %s: %v (a consumer on a lost server recovers only after missed heartbeats; a leader-elect must follow until drained)", time.Since(start).Round(time.Millisecond), err)
	}
	if e := msg.Header.Get("Nats-Service-Error"); e != "" {
		t.Fatalf("drain of n2: %s", e)
	}
	var pos replica.Position
	if err := json.Unmarshal(msg.Data, &pos); err != nil {
		t.Fatalf("drain of n2: %v: %s", err, msg.Data)
	}
	t.Logf("drained to TXID %d in %s", pos.TXID, time.Since(start).Round(time.Millisecond))
	if pos.Epoch != flushed.Epoch || uint64(pos.TXID) != flushed.TXID {
		t.Fatalf("drained to epoch %d TXID %d, leader flushed epoch %d TXID %d", pos.Epoch, pos.TXID, flushed.Epoch, flushed.TXID)
	}
}

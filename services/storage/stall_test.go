package storage_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	et "github.com/convex-cluster-manager/ccm/services/elector/electortest"
	"github.com/convex-cluster-manager/ccm/services/storage"
	"github.com/convex-cluster-manager/ccm/shared/daemon/daemontest"
	"github.com/convex-cluster-manager/ccm/shared/filestore"
	"github.com/convex-cluster-manager/ccm/shared/natstest"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// TestDrainOutlivesItsWatchsServer: a passive's manifest watch sits on a
// server that goes away (as when a partition cuts it off) while the
// manifest goes on with the others, and the node then wins the lease. The
// watch would notice only after missed heartbeats; the promotion's drain
// must not wait for that (32.5 s seen in the failover bench): it mirrors
// afresh with a new watch.
func TestDrainOutlivesItsWatchsServer(t *testing.T) {
	srvs := natstest.Cluster(t, 3)
	dir := t.TempDir()
	c1, c2 := nodeConfig(dir, "n1", srvs[0].ClientURL()), nodeConfig(dir, "n2", srvs[0].ClientURL())
	c1.NATS.Replicas, c2.NATS.Replicas = 3, 3
	n1 := et.Start(t, c1)
	et.WaitLeader(t, []*et.Node{n1}, 10*et.TTL)
	// n2 runs no elector: the test says when it wins.
	s1 := daemontest.Start[*storage.Daemon](t, storage.Spec(), c1)
	waitState(t, s1.D, schema.StorageCapturing, 20*time.Second)
	write(t, c1.StorageDir(), "modules/a.js", []byte("a"))

	nc := natstest.Connect(t, srvs[0].ClientURL())
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	// Start n2's ccm-storage until its watch sits on a server other than
	// the one it is connected to (placement is random among the peers).
	manifest := "KV_" + filestore.FilesBucket("dc")
	var s2 *daemontest.Running[*storage.Daemon]
	var host string
	for try := 0; host == "" || host == srvs[0].Name(); try++ {
		if try == 10 {
			t.Fatalf("n2's manifest watch on %s ten times in a row", srvs[0].Name())
		}
		if s2 != nil {
			s2.Stop()
			natstest.DeleteConsumers(t, js, manifest)
		}
		s2 = daemontest.Start[*storage.Daemon](t, storage.Spec(), c2)
		waitState(t, s2.D, schema.StorageSynced, 20*time.Second)
		host = natstest.ConsumerServer(t, js, manifest)
	}
	waitSame(t, c1.StorageDir(), c2.ShadowStorageDir(), 10*time.Second)
	t.Logf("n2's manifest watch is on %s: shutting it down", host)
	natstest.Shutdown(t, srvs, host)
	for i := range 20 {
		write(t, c1.StorageDir(), fmt.Sprintf("files/%02d", i), []byte(fmt.Sprintf("written after %s went away: %d", host, i)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoErrorf(t, s1.D.Flush(ctx), "n1's storage flush")
	want := tree(t, c1.StorageDir())

	// n2 wins the lease, as its elector would announce it before draining.
	epoch := natstest.TakeLeaderKey(t, nc, "dc", "n2")
	won, _ := json.Marshal(schema.RoleEvent{Cluster: "dc", Node: "n2", Role: schema.RoleLeader, Epoch: epoch,
		Deadline: time.Now().Add(time.Minute), At: time.Now()})
	require.NoError(t, nc.Publish(schema.RoleSubject("dc", "n2"), won))
	nc.Flush()

	start := time.Now()
	msg, err := nc.Request(schema.Endpoint("dc", "n2", schema.ServiceStorage, "drain"), fmt.Appendf(nil, `{"epoch":%d}`, epoch), 8*time.Second)
	if err != nil {
		t.Fatalf("drain of n2 without an answer after %s: %v (a watch on a lost server recovers only after missed heartbeats)", time.Since(start).Round(time.Millisecond), err)
	}
	if e := msg.Header.Get("Nats-Service-Error"); e != "" {
		t.Fatalf("drain of n2: %s", e)
	}
	t.Logf("drained in %s: %s", time.Since(start).Round(time.Millisecond), msg.Data)
	var res schema.StorageDrained
	if err := json.Unmarshal(msg.Data, &res); err != nil || res.Files != len(want) {
		t.Fatalf("drain of n2 reports %s (%v), want %d files", msg.Data, err, len(want))
	}
	if d := diff(want, tree(t, c2.StorageDir())); d != "" {
		t.Fatalf("n2's installed storage differs from n1's: %s", d)
	}
}

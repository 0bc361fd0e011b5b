package snapshot_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	et "github.com/convex-cluster-manager/ccm/services/elector/electortest"
	"github.com/convex-cluster-manager/ccm/services/snapshot"
	"github.com/convex-cluster-manager/ccm/services/walapply"
	"github.com/convex-cluster-manager/ccm/services/walship"
	"github.com/convex-cluster-manager/ccm/shared/daemon/daemontest"
	"github.com/convex-cluster-manager/ccm/shared/natstest"
	"github.com/convex-cluster-manager/ccm/shared/schema"
	"github.com/convex-cluster-manager/ccm/shared/snapstore"
	"github.com/convex-cluster-manager/ccm/shared/waitfor"
	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

// TestPassiveBehindRetentionRebootstraps stops a passive while the stream
// moves on past what it applied (the oldest messages purged, as retention
// does, and past the only snapshot too): started again, it reports itself
// behind retention, asks a caught-up passive for a snapshot, re-bootstraps
// from it by itself and follows the stream to the leader's position.
func TestPassiveBehindRetentionRebootstraps(t *testing.T) {
	srv := natstest.Server(t)
	dir := t.TempDir()
	c1, _ := nodeConfig(t, dir, "n1", srv.ClientURL())
	c2, _ := nodeConfig(t, dir, "n2", srv.ClientURL())
	c3, _ := nodeConfig(t, dir, "n3", srv.ClientURL())
	db := openDB(t, c1.Backend.DBPath())
	db.Exec(`CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT, blob BLOB)`)
	db.Close()

	n1 := et.Start(t, c1)
	et.WaitLeader(t, []*et.Node{n1}, et.TTL)
	ship := daemontest.Start[*walship.Daemon](t, walship.Spec(), c1)
	et.Start(t, c2)
	et.Start(t, c3)
	ap2 := daemontest.Start[*walapply.Daemon](t, walapply.Spec(), c2)
	daemontest.Start[*walapply.Daemon](t, walapply.Spec(), c3)
	daemontest.Start[*snapshot.Daemon](t, snapshot.Spec(), c3)
	waitShipping(t, ship)
	w := openDB(t, "file:"+c1.Backend.DBPath()+"?_pragma=busy_timeout(5000)")
	defer w.Close()
	nc := natstest.Connect(t, srv.ClientURL())
	flush := func() schema.FlushReply {
		t.Helper()
		f, err := request[schema.FlushReply](t, nc, schema.Endpoint("sc", "n1", schema.ServiceWalship, "flush"))
		require.NoError(t, err)
		return f
	}
	applied := func(node string, f schema.FlushReply) schema.ApplyStatus {
		t.Helper()
		var st schema.ApplyStatus
		waitfor.Cond(t, 60*time.Second, func() error {
			st, _ = request[schema.ApplyStatus](t, nc, schema.Endpoint("sc", node, schema.ServiceWalapply, "position"))
			if st.TXID < f.TXID || st.Epoch != f.Epoch || st.State != schema.ApplyFollowing {
				return fmt.Errorf("%s at %+v, want epoch %d TXID %d", node, st, f.Epoch, f.TXID)
			}
			return nil
		})
		return st
	}
	write(t, w, 0, 200)
	applied("n2", flush())

	// n2 stops; the stream moves on and its oldest messages go.
	ap2.Stop()
	write(t, w, 200, 300)
	f := flush()
	applied("n3", f)
	js, _ := jetstream.New(nc)
	s, err := js.Stream(context.Background(), walstream.Stream("sc"))
	require.NoError(t, err)
	// The only snapshot predates the purge: n2 must ask n3 for a new one.
	old, err := request[snapstore.Snapshot](t, nc, schema.Endpoint("sc", "n3", schema.ServiceSnapshot, "now"))
	require.NoError(t, err)
	write(t, w, 500, 100)
	f = flush()
	applied("n3", f)
	require.NoError(t, s.Purge(context.Background(), jetstream.WithPurgeSequence(f.Seq)))
	write(t, w, 600, 100)
	f = flush()

	// n2 comes back: behind retention, ineligible, then by itself from the
	// snapshot to the leader's position.
	daemontest.Start[*walapply.Daemon](t, walapply.Spec(), c2)
	sawBehind := false
	waitfor.Poll(t, 90*time.Second, 5*time.Millisecond, func() error {
		st, _ := request[schema.ApplyStatus](t, nc, schema.Endpoint("sc", "n2", schema.ServiceWalapply, "position"))
		switch {
		case st.State == schema.ApplyBehindRetention:
			sawBehind = true
			if !strings.Contains(st.Error, "no longer in the WAL stream") {
				t.Fatalf("behind retention without the reason: %+v", st)
			}
		case st.State == schema.ApplyFailed:
			t.Fatalf("n2 failed instead of re-bootstrapping: %+v", st)
		}
		if st.State != schema.ApplyFollowing || st.TXID < f.TXID || st.Epoch != f.Epoch {
			return fmt.Errorf("n2 at %+v, want epoch %d TXID %d", st, f.Epoch, f.TXID)
		}
		return nil
	})
	if !sawBehind {
		t.Fatal("n2 caught up without ever reporting itself behind retention: the old snapshot should not have sufficed")
	}
	if got, want := rows(t, c2.ShadowPath(), true), rows(t, c1.Backend.DBPath(), false); got != want || !strings.HasPrefix(got, "ok 700") {
		t.Fatalf("n2 after re-bootstrap (the first snapshot was %s): %q, leader %q", old.Name, got, want)
	}
}

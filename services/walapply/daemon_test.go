package walapply_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/services/cli"
	"github.com/convex-cluster-manager/ccm/services/elector"
	et "github.com/convex-cluster-manager/ccm/services/elector/electortest"
	"github.com/convex-cluster-manager/ccm/services/walapply"
	"github.com/convex-cluster-manager/ccm/services/walship"
	"github.com/convex-cluster-manager/ccm/shared/config"
	"github.com/convex-cluster-manager/ccm/shared/daemon/daemontest"
	"github.com/convex-cluster-manager/ccm/shared/natstest"
	"github.com/convex-cluster-manager/ccm/shared/replica"
	"github.com/convex-cluster-manager/ccm/shared/schema"
	"github.com/convex-cluster-manager/ccm/shared/waitfor"
)

func nodeConfig(t *testing.T, dir, id, url string) config.Config {
	c := et.Config("dc", id, url)
	c.Backend.DataPath = filepath.Join(dir, id, "data")
	c.WAL.ReplicaPath = filepath.Join(dir, id, "replica")
	os.MkdirAll(c.Backend.DataPath, 0o755)
	return c
}

// createDocs creates the test schema in a new database at path.
func createDocs(t *testing.T, path string) {
	t.Helper()
	db := openDB(t, path)
	mustExec(t, db, `CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT, blob BLOB)`)
	db.Close()
}

// waitShipping waits until the walship daemon ships and ok holds.
func waitShipping(t *testing.T, ws *daemontest.Running[*walship.Daemon], ok func() bool) {
	t.Helper()
	waitfor.Cond(t, 10*time.Second, func() error {
		if st := ws.D.Status().(walship.Status); !st.Shipping || !ok() {
			return fmt.Errorf("not shipping: %+v", st)
		}
		return nil
	})
}

func request[T any](t *testing.T, nc *nats.Conn, subject string) T {
	t.Helper()
	msg, err := nc.Request(subject, nil, 60*time.Second)
	require.NoErrorf(t, err, "%s", subject)
	if e := msg.Header.Get("Nats-Service-Error"); e != "" {
		t.Fatalf("%s: %s", subject, e)
	}
	var v T
	if err := json.Unmarshal(msg.Data, &v); err != nil {
		t.Fatalf("%s: %v: %s", subject, err, msg.Data)
	}
	return v
}

// TestDaemonsReplicateDrainAndResume runs elector, walship and walapply for
// a leader and a passive, writes on the leader, restarts the passive's
// walapply mid-stream, and drains it: its shadow must equal the leader's
// database at the flushed position.
func TestDaemonsReplicateDrainAndResume(t *testing.T) {
	srv := natstest.Server(t)
	dir := t.TempDir()
	c1 := nodeConfig(t, dir, "n1", srv.ClientURL())
	c2 := nodeConfig(t, dir, "n2", srv.ClientURL())
	db := openDB(t, c1.Backend.DBPath())
	mustExec(t, db, `CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT, blob BLOB)`)
	db.Close()

	n1 := et.Start(t, c1)
	et.WaitLeader(t, []*et.Node{n1}, et.TTL)
	et.Start(t, c2)
	daemontest.Start[*walship.Daemon](t, walship.Spec(), c1)
	daemontest.Start[*walship.Daemon](t, walship.Spec(), c2)
	daemontest.Start[*walapply.Daemon](t, walapply.Spec(), c1)
	ap2 := daemontest.Start[*walapply.Daemon](t, walapply.Spec(), c2)

	nc := natstest.Connect(t, srv.ClientURL())
	// walship opens the database (switching it to WAL) once it leads.
	waitfor.Cond(t, 10*time.Second, func() error {
		st := request[struct{ Status walship.Status }](t, nc, schema.Endpoint("dc", "n1", schema.ServiceWalship, "status"))
		if !st.Status.Shipping {
			return fmt.Errorf("n1 not shipping: %+v", st.Status)
		}
		return nil
	})
	w := openDB(t, writerDSN(c1.Backend.DBPath()))
	defer w.Close()
	workload(t, w, 800, 7)

	// Restart the passive's walapply mid-stream while writes go on.
	ap2.Stop()
	workload(t, w, 800, 8)
	ap2 = daemontest.Start[*walapply.Daemon](t, walapply.Spec(), c2)
	workload(t, w, 400, 9)

	flushed := request[schema.FlushReply](t, nc, schema.Endpoint("dc", "n1", schema.ServiceWalship, "flush"))
	pos := request[replica.Position](t, nc, schema.Endpoint("dc", "n2", schema.ServiceWalapply, "drain"))
	if pos.Epoch != flushed.Epoch || uint64(pos.TXID) != flushed.TXID {
		t.Fatalf("drained to epoch %d TXID %d, leader flushed epoch %d TXID %d", pos.Epoch, pos.TXID, flushed.Epoch, flushed.TXID)
	}
	wantCheck, want := digest(t, c1.Backend.DBPath())
	gotCheck, got := digest(t, snapshotCopy(t, c2.ShadowPath()))
	if wantCheck != "ok" || gotCheck != "ok" || got != want {
		t.Fatalf("drained shadow differs: integrity %q/%q, rows %s vs %s", wantCheck, gotCheck, got, want)
	}
	if st := ap2.D.Status().(schema.ApplyStatus); st.State != schema.ApplyPaused {
		t.Fatalf("after drain the applier is %q, want paused", st.State)
	}

	// The status key carries position and lag.
	js, _ := jetstream.New(nc)
	kv, err := js.KeyValue(context.Background(), schema.Bucket("dc"))
	require.NoError(t, err)
	// It is republished about every second: wait for the drained state.
	var st schema.ApplyStatus
	waitfor.Poll(t, 10*time.Second, 100*time.Millisecond, func() error {
		if ent, err := kv.Get(context.Background(), schema.ApplyKey("n2")); err == nil {
			json.Unmarshal(ent.Value(), &st)
			if st.TXID == flushed.TXID && st.State == schema.ApplyPaused && st.LagTXIDs == 0 {
				return nil
			}
		}
		return fmt.Errorf("apply status %+v, want TXID %d paused with no lag", st, flushed.TXID)
	})

	// ccm status shows it.
	conf := filepath.Join(dir, "n2.json")
	require.NoError(t, config.Write(conf, c2, false))
	var out, errOut bytes.Buffer
	if err := cli.Run(context.Background(), []string{"status", "--json", "--config", conf}, &out, &errOut); err != nil {
		t.Fatalf("ccm status: %v %s", err, errOut.String())
	}
	var cs cli.ClusterStatus
	require.NoError(t, json.Unmarshal(out.Bytes(), &cs))
	for _, n := range cs.Nodes {
		if n.ID == "n2" && (n.Apply == nil || n.Apply.TXID != flushed.TXID) {
			t.Fatalf("ccm status for n2: %+v", n)
		}
	}
}

// TestOnlyCaughtUpNodeCampaigns kills the leader of a three-node cluster in
// which one passive has no replication running: only the passive whose
// shadow database is caught up may take over.
func TestOnlyCaughtUpNodeCampaigns(t *testing.T) {
	srv := natstest.Server(t)
	dir := t.TempDir()
	c1 := nodeConfig(t, dir, "n1", srv.ClientURL())
	c2 := nodeConfig(t, dir, "n2", srv.ClientURL())
	c3 := nodeConfig(t, dir, "n3", srv.ClientURL())
	db := openDB(t, c1.Backend.DBPath())
	mustExec(t, db, `CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT, blob BLOB)`)
	db.Close()

	n1 := et.Start(t, c1)
	et.WaitLeader(t, []*et.Node{n1}, et.TTL)
	ship := daemontest.Start[*walship.Daemon](t, walship.Spec(), c1)
	n2 := et.Start(t, c2) // no walapply: it cannot have the data
	et.Start(t, c3)
	daemontest.Start[*walapply.Daemon](t, walapply.Spec(), c3)
	for ship.D.Status().(walship.Status).TXID == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	w := openDB(t, writerDSN(c1.Backend.DBPath()))
	workload(t, w, 200, 3)
	w.Close()

	// Record every node that claims leadership from now on. n3 wins; its
	// promotion then fails (no ccm-backend here to install its shadow) and
	// it resigns, but n2 must never campaign.
	nc := natstest.Connect(t, srv.ClientURL())
	won := make(chan string, 16)
	sub, err := nc.Subscribe(schema.RoleSubjects("dc"), func(m *nats.Msg) {
		var ev schema.RoleEvent
		if json.Unmarshal(m.Data, &ev) == nil && ev.Role == schema.RoleLeader && ev.Node != "n1" {
			select {
			case won <- ev.Node:
			default:
			}
		}
	})
	require.NoError(t, err)
	defer sub.Unsubscribe()
	n1.Stop()
	ship.Stop()
	select {
	case l := <-won:
		if l != "n3" {
			t.Fatalf("%s took over; want n3, the only caught-up passive", l)
		}
	case <-time.After(et.TTL + 2*time.Second):
		t.Fatal("nobody took over")
	}
	deadline := time.After(2 * et.TTL)
	for done := false; !done; {
		select {
		case l := <-won:
			if l == "n2" {
				t.Fatal("n2 campaigned without the data")
			}
		case <-deadline:
			done = true
		}
	}
	// n2 says why it stays out.
	st := n2.El.Status().(elector.Status)
	if st.Ineligible == "" {
		t.Fatalf("n2 status gives no reason for not campaigning: %+v", st)
	}
	t.Logf("n2: %s", st.Ineligible)
}

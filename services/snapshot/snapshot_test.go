package snapshot_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	_ "modernc.org/sqlite"

	"github.com/convex-cluster-manager/ccm/services/cli"
	et "github.com/convex-cluster-manager/ccm/services/elector/electortest"
	"github.com/convex-cluster-manager/ccm/services/snapshot"
	"github.com/convex-cluster-manager/ccm/services/walapply"
	"github.com/convex-cluster-manager/ccm/services/walship"
	"github.com/convex-cluster-manager/ccm/shared/config"
	"github.com/convex-cluster-manager/ccm/shared/daemon/daemontest"
	"github.com/convex-cluster-manager/ccm/shared/natstest"
	"github.com/convex-cluster-manager/ccm/shared/replica"
	"github.com/convex-cluster-manager/ccm/shared/schema"
	"github.com/convex-cluster-manager/ccm/shared/snapstore"
	"github.com/convex-cluster-manager/ccm/shared/waitfor"
)

func nodeConfig(t *testing.T, dir, id, url string) (config.Config, string) {
	t.Helper()
	c := et.Config("sc", id, url)
	c.Backend.DataPath = filepath.Join(dir, id, "data")
	c.WAL.ReplicaPath = filepath.Join(dir, id, "replica")
	c.WAL.SnapshotIntervalMs = 3600000
	c.WAL.SnapshotKeep = 2
	os.MkdirAll(c.Backend.DataPath, 0o755)
	path := filepath.Join(dir, id+".json")
	require.NoError(t, config.Write(path, c, false))
	return c, path
}

func openDB(t *testing.T, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", dsn)
	require.NoError(t, err)
	db.SetMaxOpenConns(1)
	return db
}

func write(t *testing.T, db *sql.DB, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		if _, err := db.Exec(`INSERT INTO docs (body, blob) VALUES (?, ?)`, fmt.Sprint("doc ", i), bytes.Repeat([]byte{byte(i)}, 1500)); err != nil {
			t.Fatal(err)
		}
	}
}

// rows summarises the docs table of a database; a shadow (copy true) is
// copied first so that SQLite never writes to it.
func rows(t *testing.T, path string, copy bool) string {
	t.Helper()
	if copy {
		b, err := os.ReadFile(path)
		require.NoError(t, err)
		path = filepath.Join(t.TempDir(), "copy.db")
		os.WriteFile(path, b, 0o644)
	}
	db := openDB(t, path)
	defer db.Close()
	var check string
	db.QueryRow(`PRAGMA integrity_check`).Scan(&check)
	var n int
	var sum string
	db.QueryRow(`SELECT count(*), group_concat(body || hex(blob), ',') FROM docs`).Scan(&n, &sum)
	return fmt.Sprintf("%s %d %x", check, n, len(sum))
}

func request[T any](t *testing.T, nc *nats.Conn, subject string) (T, error) {
	t.Helper()
	var v T
	msg, err := nc.Request(subject, nil, 60*time.Second)
	if err != nil {
		return v, err
	}
	if e := msg.Header.Get("Nats-Service-Error"); e != "" {
		return v, fmt.Errorf("%s: %s %s", subject, msg.Header.Get("Nats-Service-Error-Code"), e)
	}
	return v, json.Unmarshal(msg.Data, &v)
}

func ccm(t *testing.T, args ...string) (string, int) {
	t.Helper()
	var out bytes.Buffer
	err := cli.Run(context.Background(), args, &out, &out)
	if err != nil {
		out.WriteString(err.Error())
	}
	t.Logf("ccm %s -> %d\n%s", strings.Join(args, " "), cli.ExitCode(err), out.String())
	return out.String(), cli.ExitCode(err)
}

// TestSnapshotJoinAndLeave takes a snapshot on a passive, bootstraps a new
// node from it with ccm join, replays the stream after it, and checks that
// corrupted snapshots are refused and that ccm leave removes the node.
func TestSnapshotJoinAndLeave(t *testing.T) {
	srv := natstest.Server(t)
	dir := t.TempDir()
	c1, _ := nodeConfig(t, dir, "n1", srv.ClientURL())
	c2, _ := nodeConfig(t, dir, "n2", srv.ClientURL())
	c3, conf3 := nodeConfig(t, dir, "n3", srv.ClientURL())
	db := openDB(t, c1.Backend.DBPath())
	db.Exec(`CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT, blob BLOB)`)
	db.Close()

	n1 := et.Start(t, c1)
	et.WaitLeader(t, []*et.Node{n1}, et.TTL)
	ship := daemontest.Start[*walship.Daemon](t, walship.Spec(), c1)
	et.Start(t, c2)
	daemontest.Start[*walapply.Daemon](t, walapply.Spec(), c2)
	daemontest.Start[*snapshot.Daemon](t, snapshot.Spec(), c2)
	snap1 := daemontest.Start[*snapshot.Daemon](t, snapshot.Spec(), c1)
	waitShipping(t, ship)
	w := openDB(t, "file:"+c1.Backend.DBPath()+"?_pragma=busy_timeout(5000)")
	defer w.Close()
	write(t, w, 0, 500)

	nc := natstest.Connect(t, srv.ClientURL())
	flush := func() schema.FlushReply {
		f, err := request[schema.FlushReply](t, nc, schema.Endpoint("sc", "n1", schema.ServiceWalship, "flush"))
		require.NoError(t, err)
		return f
	}
	f := flush()
	// Wait until n2 applied it, then snapshot there.
	waitfor.Cond(t, time.Minute, func() error {
		st, _ := request[struct{ Status schema.ApplyStatus }](t, nc, schema.Endpoint("sc", "n2", schema.ServiceWalapply, "status"))
		if st.Status.TXID < f.TXID || st.Status.Epoch != f.Epoch {
			return fmt.Errorf("n2 at %+v, want epoch %d TXID %d", st.Status, f.Epoch, f.TXID)
		}
		return nil
	})
	snap, err := request[snapstore.Snapshot](t, nc, schema.Endpoint("sc", "n2", schema.ServiceSnapshot, "now"))
	require.NoError(t, err)
	if snap.Seq < f.Seq || snap.Size == 0 {
		t.Fatalf("snapshot %+v does not cover the flushed sequence %d", snap, f.Seq)
	}
	// The leader leaves scheduled snapshots to the caught-up passive, and
	// two never run at once.
	time.Sleep(1100 * time.Millisecond) // n2's apply status is published
	if _, err := snap1.D.Take(context.Background(), false); !errors.Is(err, snapshot.ErrLeader) {
		t.Fatalf("scheduled snapshot on the leader: err = %v, want ErrLeader", err)
	}
	js, _ := jetstream.New(nc)
	kv, _ := js.KeyValue(context.Background(), schema.Bucket("sc"))
	rev, err := kv.Create(context.Background(), schema.KeySnapshotLock, []byte(`{"node":"other"}`))
	require.NoError(t, err)
	if _, err := request[snapstore.Snapshot](t, nc, schema.Endpoint("sc", "n2", schema.ServiceSnapshot, "now")); err == nil || !strings.Contains(err.Error(), "another node") {
		t.Fatalf("snapshot while locked: err = %v, want busy", err)
	}
	kv.Delete(context.Background(), schema.KeySnapshotLock, jetstream.LastRevision(rev))

	write(t, w, 500, 300) // after the snapshot: replayed from the stream

	out, code := ccm(t, "join", "--config", conf3)
	if code != 0 || !strings.Contains(out, "joined cluster sc") || !strings.Contains(out, "download") {
		t.Fatalf("join: %d %s", code, out)
	}
	if out, code := ccm(t, "join", "--config", conf3); code != cli.ExitUsage || !strings.Contains(out, "--force") {
		t.Fatalf("second join without --force: %d %s", code, out)
	}
	et.Start(t, c3)
	ap3 := daemontest.Start[*walapply.Daemon](t, walapply.Spec(), c3)
	f = flush()
	pos, err := request[replica.Position](t, nc, schema.Endpoint("sc", "n3", schema.ServiceWalapply, "drain"))
	require.NoError(t, err)
	if uint64(pos.TXID) != f.TXID || pos.Epoch != f.Epoch {
		t.Fatalf("n3 drained to %+v, leader flushed %+v", pos, f)
	}
	if got, want := rows(t, c3.ShadowPath(), true), rows(t, c1.Backend.DBPath(), false); got != want || !strings.HasPrefix(got, "ok 800") {
		t.Fatalf("joined node has %q, leader %q", got, want)
	}

	// ccm leave removes n3's status.
	if out, code := ccm(t, "leave", "--config", conf3); code != 0 {
		t.Fatalf("leave: %d %s", code, out)
	}
	time.Sleep(1500 * time.Millisecond) // no daemon writes the keys again
	for _, k := range []string{schema.NodeKey("n3"), schema.ApplyKey("n3")} {
		if _, err := kv.Get(context.Background(), k); err == nil {
			t.Errorf("%s still present after leave", k)
		}
	}
	_ = ap3
}

// TestJoinRefusesCorruptSnapshots stores damaged snapshots and checks that
// ccm join refuses each and leaves no shadow database behind.
func TestJoinRefusesCorruptSnapshots(t *testing.T) {
	srv := natstest.Server(t)
	dir := t.TempDir()
	c, conf := nodeConfig(t, dir, "n1", srv.ClientURL())
	et.Start(t, c) // creates the cluster bucket
	nc := natstest.Connect(t, srv.ClientURL())
	js, _ := jetstream.New(nc)
	store, err := snapstore.Open(context.Background(), js, "sc", 1)
	require.NoError(t, err)
	// A real two-page database image and its checksum.
	good := filepath.Join(dir, "good.db")
	db := openDB(t, good)
	db.Exec(`CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT, blob BLOB)`)
	write(t, db, 0, 20)
	db.Close()
	img, _ := os.ReadFile(good)
	sh, err := replica.OpenShadow(filepath.Join(dir, "probe", "db.sqlite3"))
	require.NoError(t, err)
	sh.Close()
	os.WriteFile(filepath.Join(dir, "probe", "db.sqlite3"), img, 0o644)
	meta := snapstore.Snapshot{Epoch: 1, TXID: 5, Seq: 9, PageSize: 4096, Node: "x", Checksum: checksumOf(t, img)}

	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"flipped byte", flip(img), "checksum"},
		{"truncated", img[:len(img)-4096], "checksum"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(dir, fmt.Sprint("bad", i))
			os.WriteFile(p, tt.data, 0o644)
			m := meta
			m.Seq = uint64(100 + i)
			if _, err := store.Put(context.Background(), p, m, 10); err != nil {
				t.Fatal(err)
			}
			out, code := ccm(t, "join", "--force", "--config", conf)
			if code == 0 || !strings.Contains(out, "snapshot corrupt") || !strings.Contains(out, tt.want) {
				t.Fatalf("join of a %s snapshot: %d %s", tt.name, code, out)
			}
			if replica.Exists(c.ShadowPath()) {
				t.Fatal("a refused snapshot left a shadow database behind")
			}
		})
	}
	// And the good one is accepted.
	os.WriteFile(filepath.Join(dir, "good2"), img, 0o644)
	m := meta
	m.Seq = 200
	if _, err := store.Put(context.Background(), filepath.Join(dir, "good2"), m, 10); err != nil {
		t.Fatal(err)
	}
	if out, code := ccm(t, "join", "--force", "--config", conf); code != 0 {
		t.Fatalf("join of a good snapshot: %d %s", code, out)
	}
}

func flip(b []byte) []byte {
	c := bytes.Clone(b)
	c[len(c)/2] ^= 1
	return c
}

// TestLeaderBuildsSnapshotFromStream covers a cluster with no passive: the
// leader's ccm-snapshot replays the stream into a snapshot, and a new node
// joins from it.
func TestLeaderBuildsSnapshotFromStream(t *testing.T) {
	srv := natstest.Server(t)
	dir := t.TempDir()
	c1, _ := nodeConfig(t, dir, "n1", srv.ClientURL())
	c2, conf2 := nodeConfig(t, dir, "n2", srv.ClientURL())
	db := openDB(t, c1.Backend.DBPath())
	db.Exec(`CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT, blob BLOB)`)
	db.Close()
	n1 := et.Start(t, c1)
	et.WaitLeader(t, []*et.Node{n1}, et.TTL)
	ship := daemontest.Start[*walship.Daemon](t, walship.Spec(), c1)
	snap1 := daemontest.Start[*snapshot.Daemon](t, snapshot.Spec(), c1)
	waitShipping(t, ship)
	w := openDB(t, "file:"+c1.Backend.DBPath()+"?_pragma=busy_timeout(5000)")
	defer w.Close()
	write(t, w, 0, 300)
	nc := natstest.Connect(t, srv.ClientURL())
	if _, err := request[schema.FlushReply](t, nc, schema.Endpoint("sc", "n1", schema.ServiceWalship, "flush")); err != nil {
		t.Fatal(err)
	}
	s, err := snap1.D.Take(context.Background(), false) // no passive: the leader builds it
	require.NoError(t, err)
	t.Logf("snapshot %+v", s)
	write(t, w, 300, 100)
	if out, code := ccm(t, "join", "--config", conf2); code != 0 || !strings.Contains(out, "download") {
		t.Fatalf("join: %d %s", code, out)
	}
	et.Start(t, c2)
	daemontest.Start[*walapply.Daemon](t, walapply.Spec(), c2)
	f, err := request[schema.FlushReply](t, nc, schema.Endpoint("sc", "n1", schema.ServiceWalship, "flush"))
	require.NoError(t, err)
	pos, err := request[replica.Position](t, nc, schema.Endpoint("sc", "n2", schema.ServiceWalapply, "drain"))
	require.NoError(t, err)
	if uint64(pos.TXID) != f.TXID {
		t.Fatalf("n2 drained to %+v, leader flushed %+v", pos, f)
	}
	if got, want := rows(t, c2.ShadowPath(), true), rows(t, c1.Backend.DBPath(), false); got != want || !strings.HasPrefix(got, "ok 400") {
		t.Fatalf("joined node has %q, leader %q", got, want)
	}
}

// waitShipping waits until the leader's walship has shipped a first file.
func waitShipping(t *testing.T, ship *daemontest.Running[*walship.Daemon]) {
	t.Helper()
	waitfor.Cond(t, 30*time.Second, func() error {
		if st := ship.D.Status().(walship.Status); st.TXID == 0 {
			return fmt.Errorf("walship not shipping: %+v", st)
		}
		return nil
	})
}

package walapply_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	_ "modernc.org/sqlite"

	"github.com/convex-cluster-manager/ccm/services/walship"
	"github.com/convex-cluster-manager/ccm/shared/daemon/daemontest"
	"github.com/convex-cluster-manager/ccm/shared/natstest"
	"github.com/convex-cluster-manager/ccm/shared/replica"
	"github.com/convex-cluster-manager/ccm/shared/waitfor"
	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

const cluster = "rt"

type env struct {
	js     jetstream.JetStream
	url    string // of the NATS server
	dbPath string
	dir    string
}

func newEnv(t testing.TB) *env {
	t.Helper()
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv.ClientURL())
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	if _, err := walstream.Ensure(context.Background(), js, cluster, time.Hour, 1); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	e := &env{js: js, url: srv.ClientURL(), dir: dir, dbPath: filepath.Join(dir, "leader", "db.sqlite3")}
	os.MkdirAll(filepath.Dir(e.dbPath), 0o755)
	// Like the real backend: created with no pragmas, rollback journal.
	db := openDB(t, e.dbPath)
	mustExec(t, db, `CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT, blob BLOB)`)
	db.Close()
	return e
}

func openDB(t testing.TB, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	require.NoError(t, err)
	db.SetMaxOpenConns(1)
	return db
}

// writerDSN opens the leader database as a writer that waits for
// Litestream's short checkpoint locks instead of failing with SQLITE_BUSY.
func writerDSN(path string) string { return "file:" + path + "?_pragma=busy_timeout(30000)" }

func mustExec(t testing.TB, db *sql.DB, q string, args ...any) {
	t.Helper()
	if _, err := db.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func (e *env) ship(t *testing.T, epoch uint64) *walship.Shipper {
	t.Helper()
	return e.shipDB(t, e.dbPath, "leader", epoch)
}

// shipDB ships the database at path as node's epoch.
func (e *env) shipDB(t *testing.T, path, node string, epoch uint64) *walship.Shipper {
	t.Helper()
	s, err := walship.Open(context.Background(), e.js, walship.ShipperOptions{
		DBPath: path, Cluster: cluster, Node: node, Epoch: epoch,
		Interval: 20 * time.Millisecond, Log: daemontest.Logger(),
	})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close(context.Background()) })
	return s
}

// follower applies the stream to a shadow database in the background.
type follower struct {
	shadow  *replica.Shadow
	applier *replica.Applier // not safe for concurrent use: guarded by mu
	mu      sync.Mutex
	cancel  context.CancelFunc
	done    chan error
}

// position reads the applied position while the follower may be applying.
func (r *follower) position() replica.Position {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.applier.Position()
}

func (e *env) follow(t *testing.T, name string) *follower {
	t.Helper()
	sh, err := replica.OpenShadow(filepath.Join(e.dir, name, "db.sqlite3"))
	require.NoError(t, err)
	ap, err := replica.NewApplier(sh)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	r := &follower{shadow: sh, applier: ap, cancel: cancel, done: make(chan error, 1)}
	go func() {
		r.done <- replica.Follow(ctx, e.js, cluster, ap.Consumed()+1, func(m jetstream.Msg) error {
			md, err := m.Metadata()
			if err != nil {
				return err
			}
			r.mu.Lock()
			defer r.mu.Unlock()
			return ap.Handle(md.Sequence.Stream, m.Headers(), m.Data())
		})
	}()
	t.Cleanup(r.stop)
	return r
}

func (r *follower) stop() {
	r.cancel()
	<-r.done
	r.done <- context.Canceled
	r.shadow.Close()
}

// waitTXID waits until the replica has applied txid of the shipper's epoch.
func (r *follower) waitTXID(t *testing.T, epoch uint64, txid uint64) {
	t.Helper()
	waitfor.Cond(t, 30*time.Second, func() error {
		p := r.position()
		if p.Epoch == epoch && uint64(p.TXID) >= txid {
			return nil
		}
		select {
		case err := <-r.done:
			r.done <- err
			t.Fatalf("apply stopped at %+v: %v", p, err)
		default:
		}
		return fmt.Errorf("replica at %+v, want epoch %d TXID %d", p, epoch, txid)
	})
}

// snapshotCopy copies a shadow database so SQLite can open it without
// touching the original.
func snapshotCopy(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	p := filepath.Join(t.TempDir(), "copy.sqlite3")
	os.WriteFile(p, b, 0o644)
	return p
}

// workload commits n transactions of mixed shape.
func workload(t *testing.T, db *sql.DB, n int, seed uint64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed))
	for i := range n {
		switch op := rng.IntN(100); {
		case op < 60:
			mustExec(t, db, `INSERT INTO docs (body) VALUES (?)`, strings.Repeat("x", 100+rng.IntN(200)))
		case op < 70:
			mustExec(t, db, `INSERT INTO docs (body, blob) VALUES ('blob', ?)`, make([]byte, 4096*(1+rng.IntN(5))))
		case op < 80:
			mustExec(t, db, `UPDATE docs SET body = ? WHERE id % 7 = ?`, fmt.Sprint(i), rng.IntN(7))
		case op < 88:
			mustExec(t, db, `DELETE FROM docs WHERE id IN (SELECT id FROM docs ORDER BY random() LIMIT 3)`)
		case op < 92:
			tx, _ := db.Begin()
			for j := range 20 {
				tx.Exec(`INSERT INTO docs (body) VALUES (?)`, fmt.Sprint("batch", i, j))
			}
			require.NoError(t, tx.Commit())
		case op < 94:
			mustExec(t, db, fmt.Sprintf(`CREATE TABLE IF NOT EXISTS t%d (k TEXT PRIMARY KEY, v INTEGER)`, i%5))
			mustExec(t, db, fmt.Sprintf(`INSERT OR REPLACE INTO t%d VALUES (?, ?)`, i%5), fmt.Sprint(i), i)
		case op < 95:
			mustExec(t, db, fmt.Sprintf(`DROP TABLE IF EXISTS t%d`, rng.IntN(5)))
		case op < 96:
			mustExec(t, db, `VACUUM`)
		case op < 98:
			mustExec(t, db, `PRAGMA wal_checkpoint(PASSIVE)`)
		default:
			mustExec(t, db, `CREATE INDEX IF NOT EXISTS docs_body ON docs(body)`)
		}
	}
}

func TestPassiveConvergesUnderMixedWorkload(t *testing.T) {
	e := newEnv(t)
	s := e.ship(t, 1)
	r := e.follow(t, "passive")
	db := openDB(t, writerDSN(e.dbPath))
	defer db.Close()
	var mode string
	db.QueryRow(`PRAGMA journal_mode`).Scan(&mode)
	if mode != "wal" {
		t.Fatalf("journal mode %q after walship opened the database, want wal", mode)
	}
	workload(t, db, 3000, 1)
	txid, err := s.Flush(context.Background())
	require.NoError(t, err)
	r.waitTXID(t, 1, uint64(txid))
	wantCheck, want := digest(t, e.dbPath)
	gotCheck, got := digest(t, snapshotCopy(t, r.shadow.Path()))
	if wantCheck != "ok" || gotCheck != "ok" {
		t.Fatalf("integrity_check leader %q, passive %q", wantCheck, gotCheck)
	}
	if got != want {
		t.Fatalf("passive content %s differs from the leader's %s", got, want)
	}
	t.Logf("converged at TXID %d", txid)
}

func TestOldEpochCannotAppend(t *testing.T) {
	e := newEnv(t)
	old := e.ship(t, 3)
	db := openDB(t, writerDSN(e.dbPath))
	defer db.Close()
	mustExec(t, db, `INSERT INTO docs (body) VALUES ('before')`)
	if _, err := old.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	// A newer leader opens epoch 7 on the stream.
	if _, err := walstream.Open(context.Background(), e.js, cluster, "other", 7, "test"); err != nil {
		t.Fatal(err)
	}
	mustExec(t, db, `INSERT INTO docs (body) VALUES ('after')`)
	if _, err := old.Flush(context.Background()); !errors.Is(err, walstream.ErrFenced) {
		t.Fatalf("flush by the deposed epoch: err = %v, want ErrFenced", err)
	}
	// Nor can it reopen its epoch.
	if _, err := walstream.Open(context.Background(), e.js, cluster, "leader", 3, "test"); !errors.Is(err, walstream.ErrFenced) {
		t.Fatalf("reopen of an old epoch: err = %v, want ErrFenced", err)
	}
}

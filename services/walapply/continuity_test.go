package walapply_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/services/walship"
	"github.com/convex-cluster-manager/ccm/shared/daemon/daemontest"
	"github.com/convex-cluster-manager/ccm/shared/replica"
	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

// streamBytes is the WAL stream's size on disk.
func (e *env) streamBytes(t testing.TB) uint64 {
	t.Helper()
	s, err := e.js.Stream(context.Background(), walstream.Stream(cluster))
	require.NoError(t, err)
	info, err := s.Info(context.Background())
	require.NoError(t, err)
	return info.State.Bytes
}

// grow adds about mib MiB of incompressible rows in transactions of 8 MiB.
func grow(t testing.TB, path string, mib int) {
	t.Helper()
	growBy(t, path, mib, 8)
}

// growTx adds about mib MiB of incompressible rows in one transaction.
func growTx(t testing.TB, path string, mib int) {
	t.Helper()
	growBy(t, path, mib, mib)
}

func growBy(t testing.TB, path string, mib, perTx int) {
	t.Helper()
	db := openDB(t, writerDSN(path))
	defer db.Close()
	blob := make([]byte, 64<<10)
	for done := 0; done < mib; done += perTx {
		tx, err := db.Begin()
		require.NoError(t, err)
		for range perTx * 16 {
			rand.Read(blob)
			if _, err := tx.Exec(`INSERT INTO docs (body, blob) VALUES ('big', ?)`, blob); err != nil {
				t.Fatal(err)
			}
		}
		require.NoError(t, tx.Commit())
	}
}

// promote hands a drained follower's shadow over as the database at dbPath,
// as ccm-walapply's release and ccm-backend's install do.
func promote(t *testing.T, r *follower, dbPath string) {
	t.Helper()
	r.mu.Lock()
	require.NoError(t, r.shadow.WriteSums())
	r.mu.Unlock()
	r.stop()
	os.MkdirAll(filepath.Dir(dbPath), 0o755)
	for _, p := range [][2]string{{replica.SumsPath(r.shadow.Path()), replica.SumsPath(dbPath)}, {r.shadow.Path(), dbPath}} {
		require.NoError(t, os.Rename(p[0], p[1]))
	}
}

// TestLeaderChangeContinuesTheChain: a switchover to a caught-up passive and
// a walship restart add no copy of the database to the stream; the other
// passive follows both without one, and the demoted leader continues from
// its own database.
func TestLeaderChangeContinuesTheChain(t *testing.T) {
	size := 256 // MiB
	if testing.Short() {
		size = 32
	}
	e := newEnv(t)
	old := e.ship(t, 1)
	n2, n3 := e.follow(t, "n2"), e.follow(t, "n3")
	grow(t, e.dbPath, size)
	txid, err := old.Flush(context.Background())
	require.NoError(t, err)
	n2.waitTXID(t, 1, uint64(txid))
	n3.waitTXID(t, 1, uint64(txid))
	require.NoError(t, old.Close(context.Background()))
	// The demoted leader's own database becomes its shadow: no download.
	sh, err := replica.Adopt(context.Background(), e.dbPath, filepath.Join(e.dir, "n1", "db.sqlite3"))
	require.NoErrorf(t, err, "adopt the demoted leader's database")
	pos := sh.Position()
	sh.Close()
	if _, err := os.Stat(e.dbPath); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the demoted leader's database was copied, not moved (stat: %v)", err)
	}
	if pos.TXID != txid {
		t.Fatalf("adopted at TXID %d, the leader shipped %d", pos.TXID, txid)
	}
	n1 := e.follow(t, "n1")

	// Switchover: n2's drained shadow becomes the leader's database.
	before := e.streamBytes(t)
	newDB := filepath.Join(e.dir, "n2-data", "db.sqlite3")
	promote(t, n2, newDB)
	start := time.Now()
	s := e.shipDB(t, newDB, "n2", 2)
	t.Logf("epoch 2 open after %s (%d MiB database)", time.Since(start).Round(time.Millisecond), size)
	if how, reason := s.Start(); how != "continue" {
		t.Fatalf("epoch 2 started by %q (%s), want continue", how, reason)
	}
	w := openDB(t, writerDSN(newDB))
	mustExec(t, w, `INSERT INTO docs (body) VALUES ('after switchover')`)
	mustExec(t, w, `UPDATE docs SET body = 'updated' WHERE blob IS NULL`)
	w.Close()
	txid, err = s.Flush(context.Background())
	require.NoError(t, err)
	n3.waitTXID(t, 2, uint64(txid))
	n1.waitTXID(t, 2, uint64(txid))
	if grown := e.streamBytes(t) - before; grown > 1<<20 {
		t.Fatalf("the switchover added %d bytes to the stream, want at most 1 MiB beyond the changes", grown)
	}
	assertSame(t, newDB, n3.shadow.Path())
	assertSame(t, newDB, n1.shadow.Path())
	// Page by page too: the new leader's database is what it shipped.
	v, err := s.Verify(context.Background())
	require.NoError(t, err)
	require.Truef(t, v.Consistent(), "after the switchover: %s", v.Check)

	// A walship restart within the epoch resumes.
	require.NoError(t, s.Close(context.Background()))
	before = e.streamBytes(t)
	s = e.shipDB(t, newDB, "n2", 2)
	if how, reason := s.Start(); how != "resume" {
		t.Fatalf("restart started by %q (%s), want resume", how, reason)
	}
	w = openDB(t, writerDSN(newDB))
	mustExec(t, w, `INSERT INTO docs (body) VALUES ('after restart')`)
	w.Close()
	txid, err = s.Flush(context.Background())
	require.NoError(t, err)
	n3.waitTXID(t, 2, uint64(txid))
	if grown := e.streamBytes(t) - before; grown > 1<<20 {
		t.Fatalf("the walship restart added %d bytes to the stream, want at most 1 MiB", grown)
	}
	assertSame(t, newDB, n3.shadow.Path())
	v, err = s.Verify(context.Background())
	require.NoError(t, err)
	require.Truef(t, v.Consistent(), "after the restart: %s", v.Check)
}

// assertSame compares a leader database with a passive's shadow, row by
// row through SQLite (digests, so that large databases stay cheap).
func assertSame(t testing.TB, leader, shadow string) {
	t.Helper()
	wantCheck, want := digest(t, leader)
	gotCheck, got := digest(t, snapshotCopy(t, shadow))
	if wantCheck != "ok" || gotCheck != "ok" {
		t.Fatalf("integrity_check leader %q, passive %q", wantCheck, gotCheck)
	}
	if got != want {
		t.Fatalf("passive content %s differs from the leader's %s", got, want)
	}
}

// digest returns integrity_check and a SHA-256 of every table's rows.
func digest(t testing.TB, path string) (string, string) {
	t.Helper()
	db := openDB(t, "file:"+path+"?mode=ro")
	defer db.Close()
	var check string
	require.NoErrorf(t, db.QueryRow(`PRAGMA integrity_check`).Scan(&check), "integrity_check %s", path)
	h := sha256.New()
	rows, err := db.Query(`SELECT name, sql FROM sqlite_master WHERE type='table' ORDER BY name`)
	require.NoError(t, err)
	var tables []string
	for rows.Next() {
		var name, ddl string
		rows.Scan(&name, &ddl)
		tables = append(tables, name)
		fmt.Fprintln(h, ddl)
	}
	rows.Close()
	for _, tbl := range tables {
		rs, err := db.Query(fmt.Sprintf(`SELECT * FROM %q ORDER BY rowid`, tbl))
		require.NoError(t, err)
		cols, _ := rs.Columns()
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		for rs.Next() {
			rs.Scan(ptrs...)
			for _, v := range vals {
				if b, ok := v.([]byte); ok {
					h.Write(b)
				} else {
					fmt.Fprint(h, v)
				}
				h.Write([]byte{0})
			}
		}
		rs.Close()
	}
	return check, hex.EncodeToString(h.Sum(nil))
}

// TestNoEpochFromADatabaseBehindTheStream: a node promoted with a database
// at an earlier position of the chain (its drain read a stale view of the
// stream: a NATS server just healed from a partition answered with its
// own old state) must not open an epoch from it. Shipping it as a full
// copy rolled every node back and lost 587 acknowledged writes
// (TestBenchFailover, partitions at TTL 10 s).
func TestNoEpochFromADatabaseBehindTheStream(t *testing.T) {
	e := newEnv(t)
	old := e.ship(t, 1)
	n2 := e.follow(t, "n2")
	w := openDB(t, writerDSN(e.dbPath))
	mustExec(t, w, `INSERT INTO docs (body) VALUES ('before')`)
	txid, err := old.Flush(context.Background())
	require.NoError(t, err)
	n2.waitTXID(t, 1, uint64(txid))
	// n2 stops following at that position; the leader goes on.
	stale := filepath.Join(e.dir, "n2-data", "db.sqlite3")
	promote(t, n2, stale)
	mustExec(t, w, `INSERT INTO docs (body) VALUES ('after n2 stopped following')`)
	w.Close()
	if _, err := old.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	require.NoError(t, old.Close(context.Background()))
	before := e.streamBytes(t)
	s, err := walship.Open(context.Background(), e.js, walship.ShipperOptions{
		DBPath: stale, Cluster: cluster, Node: "n2", Epoch: 2,
		Interval: 20 * time.Millisecond, Log: daemontest.Logger(),
	})
	if err == nil {
		how, reason := s.Start()
		s.Close(context.Background())
		t.Fatalf("epoch 2 opened (%s: %s) from a database behind the stream", how, reason)
	}
	if !errors.Is(err, walship.ErrBehind) {
		t.Fatalf("open epoch 2 from a database behind the stream: %v, want ErrBehind", err)
	}
	if grown := e.streamBytes(t) - before; grown != 0 {
		t.Fatalf("the refused epoch added %d bytes to the stream", grown)
	}
}

package replica_test

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/shared/replica"
	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

// shipped creates a WAL-mode database at path with rows and records its
// content as the last shipped position (as walship's page sums do).
func shipped(t *testing.T, path string, rows int) walstream.Base {
	t.Helper()
	db := sqlDB(t, path)
	defer db.Close()
	for _, q := range []string{`PRAGMA journal_mode=WAL`, `CREATE TABLE IF NOT EXISTS t (v BLOB)`} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	for range rows {
		if _, err := db.Exec(`INSERT INTO t VALUES (randomblob(3000))`); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	must(t, err)
	sums, err := replica.BuildPageSums(f, 4096)
	f.Close()
	must(t, err)
	b := walstream.Base{Epoch: 3, TXID: 7, Checksum: sums.Checksum(), Seq: 40, End: 1 << 20, Chain: 2}
	must(t, replica.WriteSums(replica.SumsPath(path), b, &sums, replica.SumsShipped))
	return b
}

func sqlDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)")
	must(t, err)
	db.SetMaxOpenConns(1)
	return db
}

// TestAdoptMovesOnlyAnUnusedDatabase: a demoted leader's database is
// moved into place when no process has it open, copied (consistently)
// when one has, and left where it is when it holds a change that was not
// shipped.
func TestAdoptMovesOnlyAnUnusedDatabase(t *testing.T) {
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "data", "db.sqlite3")
	must(t, os.MkdirAll(filepath.Dir(dbPath), 0o755))
	b := shipped(t, dbPath, 300)
	ctx := context.Background()

	// Open in this process (a backend that did not stop): copied.
	db := sqlDB(t, dbPath)
	var n int
	must(t, db.QueryRow(`SELECT count(*) FROM t`).Scan(&n))
	sh, err := replica.Adopt(ctx, dbPath, filepath.Join(dir, "copy", "db.sqlite3"))
	require.NoErrorf(t, err, "adopt a database in use")
	if p := sh.Position(); p.Checksum != b.Checksum || p.TXID != b.TXID || !sh.Verified() {
		t.Fatalf("adopted at %+v (verified %v), want %+v", p, sh.Verified(), b)
	}
	sh.Close()
	if _, err := os.Stat(dbPath); err != nil {
		t.Fatalf("a database in use was moved: %v", err)
	}
	db.Close()

	// A change that was not shipped: not adopted, and still there.
	db = sqlDB(t, dbPath)
	if _, err := db.Exec(`INSERT INTO t VALUES ('unshipped')`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := replica.Adopt(ctx, dbPath, filepath.Join(dir, "diverged", "db.sqlite3")); !errors.Is(err, replica.ErrDiverged) {
		t.Fatalf("adopt a database with an unshipped change: %v, want ErrDiverged", err)
	}
	db = sqlDB(t, dbPath)
	must(t, db.QueryRow(`SELECT count(*) FROM t WHERE v = 'unshipped'`).Scan(&n))
	db.Close()
	if n != 1 {
		t.Fatal("the unshipped change is gone from the demoted leader's database")
	}

	// Shipped again and closed by everyone: moved.
	b = shipped(t, dbPath, 10)
	shadow := filepath.Join(dir, "shadow", "db.sqlite3")
	sh, err = replica.Adopt(ctx, dbPath, shadow)
	require.NoErrorf(t, err, "adopt an unused database")
	defer sh.Close()
	if _, err := os.Stat(dbPath); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("an unused database was copied, not moved (stat: %v)", err)
	}
	if _, err := os.Stat(replica.SumsPath(dbPath)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the moved database's page sums stayed behind (stat: %v)", err)
	}
	if p := sh.Position(); p.Checksum != b.Checksum || !sh.Verified() {
		t.Fatalf("adopted at %+v, want checksum %s", p, b.Checksum)
	}
	ap, err := replica.NewApplier(sh)
	must(t, err)
	ap.Close()
}

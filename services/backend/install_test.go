package backend

import (
	"context"
	"database/sql"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	_ "modernc.org/sqlite"

	"github.com/convex-cluster-manager/ccm/shared/config"
	"github.com/convex-cluster-manager/ccm/shared/replica"
)

func TestInstallMovesShadowAndSetsAsideOldDatabase(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data", "db.sqlite3")
	shadow := filepath.Join(dir, "replica", "db.sqlite3")
	os.MkdirAll(filepath.Dir(data), 0o755)
	os.MkdirAll(filepath.Dir(shadow), 0o755)
	// The shadow: a rollback-journal database (header versions 1) with a row.
	db, _ := sql.Open("sqlite", shadow)
	db.Exec(`CREATE TABLE t (v TEXT)`)
	db.Exec(`INSERT INTO t VALUES ('replicated')`)
	db.Close()
	os.WriteFile(shadow+".ccm-position", []byte(`{}`), 0o644)
	// The old database, with a WAL that holds an unreplicated tail.
	os.WriteFile(data, []byte("old database"), 0o644)
	os.WriteFile(data+"-wal", []byte("old tail"), 0o644)

	aside, err := install(shadow, data, filepath.Join(dir, ".ccm-set-aside", "epoch-9"))
	require.NoError(t, err)
	if b, _ := os.ReadFile(filepath.Join(aside, "db.sqlite3-wal")); string(b) != "old tail" {
		t.Fatalf("old WAL not set aside in %s", aside)
	}
	if _, err := os.Stat(data + "-wal"); err == nil {
		t.Fatal("old WAL left beside the new database")
	}
	if _, err := os.Stat(shadow); err == nil {
		t.Fatal("shadow still in the replica path")
	}
	if _, err := os.Stat(shadow + ".ccm-position"); err == nil {
		t.Fatal("shadow position left behind")
	}
	db, _ = sql.Open("sqlite", data)
	defer db.Close()
	var mode, v string
	db.QueryRow(`PRAGMA journal_mode`).Scan(&mode)
	db.QueryRow(`SELECT v FROM t`).Scan(&v)
	if mode != "wal" || v != "replicated" {
		t.Fatalf("installed database: journal_mode %q, row %q; want wal and the replicated row", mode, v)
	}
}

func TestInstallRefusesNonSQLite(t *testing.T) {
	dir := t.TempDir()
	shadow := filepath.Join(dir, "shadow")
	os.WriteFile(shadow, []byte("definitely not a database, just text"), 0o644)
	if _, err := install(shadow, filepath.Join(dir, "db"), filepath.Join(dir, "aside")); err == nil {
		t.Fatal("installed a file that is not an SQLite database")
	}
	if _, err := os.Stat(shadow); err != nil {
		t.Fatal("refused shadow was moved or removed")
	}
}

func TestEnsureDatabase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data", "db.sqlite3")
	created, err := ensureDatabase(path)
	if err != nil || !created {
		t.Fatalf("ensureDatabase = %v, %v; want created", created, err)
	}
	db, _ := sql.Open("sqlite", path)
	var mode string
	db.QueryRow(`PRAGMA journal_mode`).Scan(&mode)
	db.Close()
	if mode != "wal" {
		t.Fatalf("journal_mode %q, want wal", mode)
	}
	if created, err := ensureDatabase(path); err != nil || created {
		t.Fatalf("second ensureDatabase = %v, %v; want kept", created, err)
	}
}

// TestInstallRefusesHeldShadow: a shadow still open for applying (not
// released by ccm-walapply) is neither moved nor changed; once its writer
// closes it, it installs.
func TestInstallRefusesHeldShadow(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data", "db.sqlite3")
	shadow := filepath.Join(dir, "replica", "db.sqlite3")
	os.MkdirAll(filepath.Dir(shadow), 0o755)
	db, err := sql.Open("sqlite", shadow)
	require.NoError(t, err)
	_, err = db.Exec(`CREATE TABLE t (v TEXT)`)
	require.NoError(t, err)
	db.Close()
	sh, err := replica.OpenShadow(shadow)
	require.NoError(t, err)

	_, err = install(shadow, data, filepath.Join(dir, "aside"))
	require.ErrorIs(t, err, replica.ErrHeld)
	require.FileExists(t, shadow, "a held shadow was moved")
	require.NoFileExists(t, data)

	require.NoError(t, sh.Close())
	_, err = install(shadow, data, filepath.Join(dir, "aside"))
	require.NoError(t, err)
	require.FileExists(t, data)
}

// TestStartCreatesTheDatabaseFirst: a backend started with no database
// (a promotion whose Prepare found ccm-backend not yet running) finds one
// ccm created, group-writable, not one it creates itself with SQLite's
// 0644, which ccm-walship, another user, cannot write (found by the chaos
// campaign: "attempt to write a readonly database"). With a shadow to
// install, none is created: serving an empty database would go back in
// time.
func TestStartCreatesTheDatabaseFirst(t *testing.T) {
	old := syscall.Umask(0o007)
	defer syscall.Umask(old)
	cfg := config.Default()
	cfg.Backend.DataPath = filepath.Join(t.TempDir(), "data")
	cfg.WAL.ReplicaPath = filepath.Join(t.TempDir(), "replica")
	cfg.Backend.ServiceName = "ccm-test-no-such-unit"
	d := &Daemon{cfg: cfg, log: slog.Default(), unit: newSystemctl("ccm-test-no-such-unit.service")}
	d.startUnit(context.Background()) // no such unit: the start fails, the database stays
	st, err := os.Stat(cfg.Backend.DBPath())
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o660), st.Mode().Perm())

	cfg.Backend.DataPath = filepath.Join(t.TempDir(), "data")
	require.NoError(t, os.MkdirAll(cfg.WAL.ReplicaPath, 0o750))
	require.NoError(t, os.WriteFile(cfg.ShadowPath(), make([]byte, 4096), 0o640))
	require.True(t, replica.Exists(cfg.ShadowPath()), "the test needs a shadow")
	d.cfg = cfg
	d.startUnit(context.Background())
	_, err = os.Stat(cfg.Backend.DBPath())
	require.ErrorIs(t, err, fs.ErrNotExist)
}

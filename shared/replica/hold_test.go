package replica_test

import (
	"database/sql"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/shared/replica"
)

// TestShadowIsHeldWhileOpen: an open shadow cannot be opened for applying
// a second time nor held by another (ccm-backend's install), while SQLite
// still reads it; closing it lets go.
func TestShadowIsHeldWhileOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db.sqlite3")
	db, err := sql.Open("sqlite", path)
	require.NoError(t, err)
	_, err = db.Exec(`CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('x')`)
	require.NoError(t, err)
	db.Close()

	sh, err := replica.OpenShadow(path)
	require.NoError(t, err)
	_, err = replica.OpenShadow(path)
	require.ErrorIs(t, err, replica.ErrHeld)
	_, err = replica.Hold(path)
	require.ErrorIs(t, err, replica.ErrHeld)
	require.ErrorContains(t, err, path, "the error names the shadow")

	db, err = sql.Open("sqlite", path)
	require.NoError(t, err)
	defer db.Close()
	var v string
	require.NoError(t, db.QueryRow(`SELECT v FROM t`).Scan(&v), "SQLite reads a held shadow")

	require.NoError(t, sh.Close())
	release, err := replica.Hold(path)
	require.NoError(t, err)
	_, err = replica.OpenShadow(path)
	require.ErrorIs(t, err, replica.ErrHeld, "a held shadow is not opened for applying")
	release()
	sh, err = replica.OpenShadow(path)
	require.NoError(t, err)
	sh.Close()
}

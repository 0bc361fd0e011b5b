package replica_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/shared/replica"
)

// TestShadowCheckFindsTheFirstBadPage: a shadow as applied is consistent;
// a page changed behind the applier's back is found by number.
func TestShadowCheckFindsTheFirstBadPage(t *testing.T) {
	_, sh, db := base(t)
	c, err := sh.Check()
	require.NoError(t, err)
	require.True(t, c.Consistent(), c.String())
	require.Equal(t, uint32(4), c.Pages)
	require.Equal(t, db.sum(), c.Actual)

	f, err := os.OpenFile(sh.Path(), os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte("not what was shipped"), 2*pageSize+100) // page 3
	require.NoError(t, err)
	require.NoError(t, f.Close())
	c, err = sh.Check()
	require.NoError(t, err)
	require.False(t, c.Consistent())
	require.Equal(t, uint32(3), c.FirstBad, c.String())
	require.Equal(t, uint32(1), c.BadPages)
	require.Equal(t, db.sum(), c.Recorded)
}

// TestDatabasePageSumsReadWhatAReaderSees: the live database's page sums
// include pages still in its WAL, and a page differing from the record is
// found.
func TestDatabasePageSumsReadWhatAReaderSees(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db.sqlite3")
	shipped(t, path, 50) // WAL mode, rows committed, some pages only in the WAL
	db := sqlDB(t, path)
	defer db.Close()
	_, err := db.Exec(`CREATE TABLE IF NOT EXISTS more (b BLOB); INSERT INTO more VALUES (randomblob(20000))`)
	require.NoError(t, err)
	st, err := os.Stat(path + "-wal")
	require.NoError(t, err)
	require.NotZero(t, st.Size(), "the test needs pages in the WAL")

	live, err := replica.DatabasePageSums(context.Background(), path)
	require.NoError(t, err)
	_, err = db.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`)
	require.NoError(t, err)
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	file, err := replica.BuildPageSums(f, live.PageSize())
	require.NoError(t, err)
	require.Equal(t, file.Checksum(), live.Checksum())
	require.Equal(t, file.Pages(), live.Pages())

	c := replica.Compare(&file, &live)
	require.True(t, c.Consistent(), c.String())
	_, err = db.Exec(`INSERT INTO more VALUES (randomblob(10))`)
	require.NoError(t, err)
	live, err = replica.DatabasePageSums(context.Background(), path)
	require.NoError(t, err)
	c = replica.Compare(&file, &live)
	require.False(t, c.Consistent())
	require.NotZero(t, c.FirstBad, c.String())
}

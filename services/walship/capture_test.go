package walship

import (
	"database/sql"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	_ "modernc.org/sqlite"
)

// TestCommitWatchIgnoresUncommittedFrames checks what capture relies on:
// a transaction that spills frames into the WAL before it commits leaves
// the WAL-index header alone; its commit changes it.
func TestCommitWatchIgnoresUncommittedFrames(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db.sqlite3")
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(WAL)&_pragma=cache_size(-256)")
	require.NoError(t, err)
	defer db.Close()
	db.SetMaxOpenConns(1)
	if _, err := db.Exec(`CREATE TABLE t (v BLOB)`); err != nil {
		t.Fatal(err)
	}
	w := commitWatch{shm: path + "-shm"}
	defer w.close()
	if !w.changed() {
		t.Fatal("first look: want changed")
	}
	if w.changed() {
		t.Fatal("nothing committed: want unchanged")
	}
	tx, err := db.Begin()
	require.NoError(t, err)
	walBefore, _ := os.Stat(path + "-wal")
	for range 2000 { // 8 MiB through a 256 KiB page cache
		if _, err := tx.Exec(`INSERT INTO t VALUES (randomblob(4000))`); err != nil {
			t.Fatal(err)
		}
	}
	walDuring, err := os.Stat(path + "-wal")
	if err != nil || walDuring.Size() <= walBefore.Size()+4<<20 {
		t.Fatalf("the open transaction did not spill frames into the WAL (%v): the test proves nothing", err)
	}
	if w.changed() {
		t.Fatal("uncommitted frames changed the WAL-index header")
	}
	require.NoError(t, tx.Commit())
	if !w.changed() {
		t.Fatal("a commit left the WAL-index header unchanged")
	}
}

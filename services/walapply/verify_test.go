package walapply_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

// corruptPage overwrites part of page pgno of the database file at path,
// as a bad disk or a stray writer would.
func corruptPage(t *testing.T, path string, pgno int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte("bytes nobody shipped"), (pgno-1)*4096+500)
	require.NoError(t, err)
	require.NoError(t, f.Close())
}

// TestVerifyComparesLeaderAndShadowAtOnePosition: after a mixed workload
// the leader's database (as shipped) and the passive's shadow read whole
// give the same checksum at the same TXID; a page changed behind
// SQLite's or the applier's back is found, by number, on either side.
func TestVerifyComparesLeaderAndShadowAtOnePosition(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	s := e.ship(t, 1)
	r := e.follow(t, "passive")
	db := openDB(t, writerDSN(e.dbPath))
	defer db.Close()
	workload(t, db, 500, 7)

	leader, err := s.Verify(ctx)
	require.NoError(t, err)
	require.True(t, leader.Consistent(), leader.Check.String())
	require.Equal(t, uint64(s.Shipped()), uint64(leader.Position.TXID))
	r.waitTXID(t, 1, uint64(leader.Position.TXID))
	r.mu.Lock()
	passive, err := r.shadow.Check()
	r.mu.Unlock()
	require.NoError(t, err)
	require.True(t, passive.Consistent(), passive.String())
	require.Equal(t, leader.Actual, passive.Actual, "leader and passive at TXID %d", leader.Position.TXID)

	r.mu.Lock()
	corruptPage(t, r.shadow.Path(), 2)
	passive, err = r.shadow.Check()
	r.mu.Unlock()
	require.NoError(t, err)
	require.False(t, passive.Consistent())
	require.Equal(t, uint32(2), passive.FirstBad, passive.String())

	pgno := pageOnlyInFile(t, e.dbPath) // a reader sees the file's copy
	corruptPage(t, e.dbPath, int64(pgno))
	leader, err = s.Verify(ctx)
	require.NoError(t, err)
	require.False(t, leader.Consistent())
	require.Equal(t, pgno, leader.FirstBad, leader.Check.String())
}

// pageOnlyInFile returns a page of the database at path that no frame of
// its WAL's current generation holds.
func pageOnlyInFile(t *testing.T, path string) uint32 {
	t.Helper()
	wal, err := os.ReadFile(path + "-wal")
	if errors.Is(err, fs.ErrNotExist) {
		wal = nil
	} else {
		require.NoError(t, err)
	}
	inWAL := map[uint32]bool{}
	for off := 32; off+24+4096 <= len(wal); off += 24 + 4096 {
		if bytes.Equal(wal[off+8:off+16], wal[16:24]) { // the salt of the WAL's current generation
			inWAL[binary.BigEndian.Uint32(wal[off:])] = true
		}
	}
	st, err := os.Stat(path)
	require.NoError(t, err)
	for pgno := uint32(2); pgno <= uint32(st.Size()/4096); pgno++ {
		if !inWAL[pgno] {
			return pgno
		}
	}
	t.Fatalf("every page of %s is in its WAL", path)
	return 0
}

package walapply_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestShipRestartAfterWALResetShipsOnlyChanges: while walship is down the
// backend's own checkpoint resets the WAL, so Litestream, on restart,
// cannot tell which pages changed and captures every page of the
// database. walship must ship only the pages that differ from what it
// shipped before, not a full copy, and the passive must end equal.
func TestShipRestartAfterWALResetShipsOnlyChanges(t *testing.T) {
	e := newEnv(t)
	grow(t, e.dbPath, 32)
	s := e.ship(t, 1)
	r := e.follow(t, "passive")
	txid, err := s.Flush(context.Background())
	require.NoError(t, err)
	r.waitTXID(t, 1, uint64(txid))
	require.NoError(t, s.Close(context.Background()))

	// walship is down: the backend writes, checkpoints, and writes again
	// into a WAL with new salts.
	w := openDB(t, writerDSN(e.dbPath))
	mustExec(t, w, `INSERT INTO docs (body) VALUES ('while walship was down')`)
	mustExec(t, w, `PRAGMA wal_checkpoint(TRUNCATE)`)
	mustExec(t, w, `INSERT INTO docs (body) VALUES ('after the WAL reset')`)
	w.Close()

	before := e.streamBytes(t)
	s = e.ship(t, 1)
	if how, reason := s.Start(); how != "resume" {
		t.Fatalf("restart within the epoch: %s (%s), want resume", how, reason)
	}
	txid, err = s.Flush(context.Background())
	require.NoError(t, err)
	r.waitTXID(t, 1, uint64(txid))
	grown := e.streamBytes(t) - before
	t.Logf("restart after a WAL reset with a 32 MiB database: the stream grew by %d bytes", grown)
	if grown > 1<<20 {
		t.Fatalf("the stream grew by %d bytes: a full copy of the database", grown)
	}
	r.stop()
	assertSame(t, e.dbPath, r.shadow.Path())
}

// TestShipResumeAfterWALRestartLosesNothing: while walship is down, the
// backend (its connection still open) changes a row, its checkpoint
// copies the whole WAL into the database and its next write restarts the
// WAL from the start with new salts: the WAL file keeps its old length
// and the frame Litestream last captured is still in it, but what
// followed it was overwritten. A resumed walship must ship the change
// made while it was down.
func TestShipResumeAfterWALRestartLosesNothing(t *testing.T) {
	e := newEnv(t)
	s := e.ship(t, 1)
	r := e.follow(t, "passive")
	w := openDB(t, writerDSN(e.dbPath))
	defer w.Close()
	workload(t, w, 300, 3)
	txid, err := s.Flush(context.Background())
	require.NoError(t, err)
	r.waitTXID(t, 1, uint64(txid))
	require.NoError(t, s.Close(context.Background()))

	mustExec(t, w, `UPDATE docs SET body = 'changed while walship was down' WHERE id IN (SELECT id FROM docs ORDER BY id LIMIT 3)`)
	mustExec(t, w, `PRAGMA wal_checkpoint(PASSIVE)`)
	mustExec(t, w, `INSERT INTO docs (body) VALUES ('the first write of a restarted WAL')`)

	s = e.ship(t, 1)
	t.Logf("restart: %s", func() string { how, reason := s.Start(); return how + " " + reason }())
	assertAllShipped(t, e, s, r)
}

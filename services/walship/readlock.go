package walship

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"

	"github.com/benbjohnson/litestream"
	"github.com/superfly/ltx"
)

// Litestream keeps a read transaction open on the database between its
// syncs: no other connection can then checkpoint a frame it has not
// captured. It lets go of it only inside its own checkpoints (under a write
// barrier) and takes it again after; if that fails (the sync's context
// ended there, or the database was busy, which it counts as a skipped
// checkpoint) it runs on without it, and nothing takes it again. From then
// on the backend's own checkpoint can copy a commit into the database and
// its next write restart the WAL over it: Litestream finds the frame it
// captured last still in place, reads the new WAL from its start, and the
// commit is never shipped (TestShipAfterFlushCanceledInCheckpointLosesNothing).
//
// Litestream (v0.5) has no way to ask for the lock again, nor to ask
// whether it holds it: holdsReadLock reads its fields, and a shipper
// found without the lock stops shipping (Broken) so that walship restarts
// it, from what was captured while the lock was held.

// holdsReadLock reports whether db, open on its database, holds its
// read transaction; a db not open on one (db.db nil: it opens it, and
// takes the lock, at its next sync) counts as holding it.
func holdsReadLock(db *litestream.DB) bool {
	v := reflect.ValueOf(db).Elem()
	conn, rtx := v.FieldByName("db"), v.FieldByName("rtx")
	if !conn.IsValid() || !rtx.IsValid() {
		panic("litestream.DB has no db or rtx field: check holdsReadLock against this Litestream version")
	}
	return conn.IsNil() || !rtx.IsNil()
}

// sync captures what was committed (Litestream's Sync) and checks that
// Litestream still holds its read lock after it; without it the shipper
// is broken from the last TXID captured.
func (s *Shipper) sync(ctx context.Context) error {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	if err := s.Broken(); err != nil {
		return err
	}
	err := s.db.Sync(ctx)
	if holdsReadLock(s.db) {
		return err
	}
	// What this sync captured came before the lock was let go: it
	// checkpoints only after capturing, under a write barrier.
	_, txid, merr := s.db.MaxLTX()
	if merr != nil {
		txid = 0
	}
	broken := fmt.Errorf("lost Litestream's read lock on the database after TXID %d (sync: %v): walship must restart from there", txid, err)
	s.trusted = txid
	s.client.refuseAfter(txid, broken)
	s.broken.Store(&broken)
	if s.onBroken != nil {
		s.onBroken(broken)
	}
	return broken
}

// Broken returns why the shipper stopped capturing for good, if it did.
func (s *Shipper) Broken() error {
	if err := s.broken.Load(); err != nil {
		return *err
	}
	return nil
}

// dropUntrusted removes Litestream's local files captured after the
// shipper broke (its final sync on close among them): they may lack what
// the backend checkpointed meanwhile. A restart then resumes from the
// last trusted file, and finds the WAL restarted if it was.
func (s *Shipper) dropUntrusted() error {
	if s.Broken() == nil {
		return nil
	}
	dir := s.db.LTXLevelDir(0)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		min, _, err := ltx.ParseFilename(e.Name())
		if err == nil && min > s.trusted {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

package replica

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	_ "modernc.org/sqlite" // the database/sql driver "sqlite"

	"github.com/convex-cluster-manager/ccm/shared/fsutil"
)

// Adopt makes the database at dbPath the shadow at shadowPath, at the
// chain position recorded in dbPath's page-sums file: a demoted leader
// continues from what it shipped instead of downloading a snapshot. The
// WAL is checkpointed into the database first. If no other process has
// the database open (the backend and walship stopped), the file is moved,
// not copied; otherwise a copy is taken inside a read transaction, so it
// is one consistent state. Either way it is adopted only if its checksum
// is the recorded one (a change committed after the last shipped file
// makes it differ), and a database that differs stays at dbPath. It
// returns the shadow, open and verified. Nothing is changed at shadowPath
// unless it returns nil.
func Adopt(ctx context.Context, dbPath, shadowPath string) (*Shadow, error) {
	sums, err := ReadSums(SumsPath(dbPath))
	if err != nil {
		return nil, err
	}
	b := sums.Base
	if err := checkpointTruncate(ctx, dbPath); err != nil {
		return nil, err
	}
	// The shadow path holds nothing worth keeping (a released or missing
	// shadow), and its sidecars must go before the database lands.
	if err := Reset(shadowPath); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(shadowPath), fsutil.DataDir); err != nil {
		return nil, err
	}
	tmp := shadowPath + ".ccm-adopt"
	defer os.Remove(tmp)
	moved, err := moveUnused(dbPath, tmp)
	if err != nil {
		return nil, err
	}
	if !moved {
		if err := copyConsistent(ctx, dbPath, tmp); err != nil {
			return nil, err
		}
	}
	f, err := os.Open(tmp)
	if err != nil {
		return nil, err
	}
	got, err := BuildPageSums(f, sums.Pages.PageSize())
	f.Close()
	if err == nil && got.Checksum() != b.Checksum {
		err = fmt.Errorf("%w: %s has checksum %s, its last shipped position (TXID %d) %s", ErrDiverged, dbPath, got.Checksum(), b.TXID, b.Checksum)
	}
	if err != nil {
		if moved { // it is not ours to take: put it back
			if rerr := os.Rename(tmp, dbPath); rerr != nil {
				return nil, fmt.Errorf("%w; and putting it back at %s failed: %w", err, dbPath, rerr)
			}
		}
		return nil, err
	}
	if err := os.Rename(tmp, shadowPath); err != nil {
		return nil, err
	}
	if moved { // its page sums describe the database that moved away
		for _, p := range []string{sumsLog(SumsPath(dbPath)), SumsPath(dbPath)} {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, err
			}
		}
	}
	for _, dir := range []string{filepath.Dir(shadowPath), filepath.Dir(dbPath)} {
		if err := fsutil.SyncDir(dir); err != nil {
			return nil, err
		}
	}
	pos := Position{Epoch: b.Epoch, TXID: b.TXID, Seq: b.Seq, Checksum: b.Checksum, PageSize: got.PageSize(),
		Bytes: b.End, Chain: b.Chain}
	if err := Install(shadowPath, pos); err != nil {
		return nil, err
	}
	sh, err := OpenShadow(shadowPath)
	if err != nil {
		return nil, err
	}
	sh.sums, sh.verified = got, true
	return sh, nil
}

// checkpointTruncate moves the WAL's content into the database file and
// empties the WAL.
func checkpointTruncate(ctx context.Context, dbPath string) error {
	db, err := sql.Open("sqlite", "file:"+dbPath+"?_pragma=busy_timeout(5000)")
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	var busy, frames, done int
	if err := db.QueryRowContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`).Scan(&busy, &frames, &done); err != nil {
		return fmt.Errorf("checkpoint %s: %w", dbPath, err)
	}
	if busy != 0 {
		return fmt.Errorf("checkpoint %s: the database is in use", dbPath)
	}
	return nil
}

// moveUnused renames dbPath to to if no process has the database open and
// its WAL is empty, holding SQLite's locks meanwhile so that none opens
// it; it reports false (and changes nothing) if it is in use or on
// another file system.
func moveUnused(dbPath, to string) (bool, error) {
	unlock, err := lockUnused(dbPath)
	if errors.Is(err, ErrInUse) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer unlock()
	if st, err := os.Stat(dbPath + "-wal"); err == nil && st.Size() > 0 {
		return false, nil // not all in the database file
	}
	if err := os.Rename(dbPath, to); errors.Is(err, syscall.EXDEV) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	// What SQLite kept beside the database belongs to the moved file.
	os.Remove(dbPath + "-wal")
	os.Remove(dbPath + "-shm")
	return true, nil
}

// copyConsistent copies the database at dbPath to to inside a read
// transaction, and syncs the copy.
func copyConsistent(ctx context.Context, dbPath, to string) error {
	db, err := sql.Open("sqlite", "file:"+dbPath+"?_pragma=busy_timeout(5000)")
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master`).Scan(&n); err != nil {
		return fmt.Errorf("read %s: %w", dbPath, err)
	}
	src, err := os.Open(dbPath)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, fsutil.DataFile)
	if err != nil {
		return err
	}
	_, err = io.Copy(dst, bufio.NewReaderSize(src, 1<<20))
	if err == nil {
		err = dst.Sync()
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("copy %s: %w", dbPath, err)
	}
	return nil
}

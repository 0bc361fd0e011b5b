package replica

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"os"
	"path/filepath"

	_ "modernc.org/sqlite" // the database/sql driver "sqlite"

	"github.com/convex-cluster-manager/ccm/shared/fsutil"
)

// Adopt makes a copy of the database at dbPath the shadow at shadowPath,
// at the chain position recorded in dbPath's page-sums file: a demoted
// leader continues from what it shipped instead of downloading a snapshot.
// The WAL is checkpointed into the database first and the copy is taken
// inside a read transaction, so it is one consistent state; it is adopted
// only if its checksum is the recorded one (a change committed after the
// last shipped file makes it differ). Nothing is changed at shadowPath
// unless it returns nil.
func Adopt(ctx context.Context, dbPath, shadowPath string) (Position, error) {
	sums, err := ReadSums(SumsPath(dbPath))
	if err != nil {
		return Position{}, err
	}
	b := sums.Base
	db, err := sql.Open("sqlite", "file:"+dbPath+"?_pragma=busy_timeout(5000)")
	if err != nil {
		return Position{}, err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	var busy, frames, done int
	if err := db.QueryRowContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`).Scan(&busy, &frames, &done); err != nil {
		return Position{}, fmt.Errorf("checkpoint %s: %w", dbPath, err)
	}
	if busy != 0 {
		return Position{}, fmt.Errorf("checkpoint %s: the database is in use", dbPath)
	}
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return Position{}, err
	}
	defer tx.Rollback()
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master`).Scan(&n); err != nil {
		return Position{}, fmt.Errorf("read %s: %w", dbPath, err)
	}
	src, err := os.Open(dbPath)
	if err != nil {
		return Position{}, err
	}
	defer src.Close()
	// The shadow path holds nothing worth keeping (a released or missing
	// shadow), and its sidecars must go before the copy lands.
	if err := Reset(shadowPath); err != nil {
		return Position{}, err
	}
	if err := os.MkdirAll(filepath.Dir(shadowPath), 0o750); err != nil {
		return Position{}, err
	}
	tmp := shadowPath + ".ccm-adopt"
	dst, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return Position{}, err
	}
	defer os.Remove(tmp)
	got, err := BuildPageSums(io.TeeReader(src, dst), sums.Pages.PageSize())
	if err == nil {
		err = dst.Sync()
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Position{}, fmt.Errorf("copy %s: %w", dbPath, err)
	}
	if got.Checksum() != b.Checksum {
		return Position{}, fmt.Errorf("%w: %s has checksum %s, its last shipped position (TXID %d) %s", ErrDiverged, dbPath, got.Checksum(), b.TXID, b.Checksum)
	}
	if err := os.Rename(tmp, shadowPath); err != nil {
		return Position{}, err
	}
	if err := fsutil.SyncDir(filepath.Dir(shadowPath)); err != nil {
		return Position{}, err
	}
	pos := Position{Epoch: b.Epoch, TXID: b.TXID, Seq: b.Seq, Checksum: b.Checksum, PageSize: got.PageSize(),
		Bytes: b.End, Chain: b.Chain}
	if err := Install(shadowPath, pos); err != nil {
		return Position{}, err
	}
	return pos, nil
}

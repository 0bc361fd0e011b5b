package walship

import (
	"context"
	"database/sql"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/benbjohnson/litestream"
	"github.com/superfly/ltx"
	"modernc.org/sqlite"

	"github.com/convex-cluster-manager/ccm/shared/fsutil"
)

// seed makes Litestream's local state say that TXID txid is the database
// file as it is, with an empty WAL, so that its first capture is the
// changes after it rather than a full snapshot. It writes one small change
// (Litestream's own sequence row) to give the WAL a header, records the
// header's salts in a file of TXID txid that starts and ends at the WAL's
// first frame, and returns the connection: it must stay open until
// Litestream has its own, or closing it would checkpoint the WAL away.
func seed(ctx context.Context, db *litestream.DB, txid ltx.TXID, pages uint32) (*sql.DB, error) {
	conn, err := sql.Open("sqlite", "file:"+db.Path()+"?_pragma=busy_timeout(5000)")
	if err != nil {
		return nil, err
	}
	conn.SetMaxOpenConns(1)
	ok := false
	defer func() {
		if !ok {
			conn.Close()
		}
	}()
	c, err := conn.Conn(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if err := c.Raw(func(dc any) error {
		fc, ok := dc.(sqlite.FileControl)
		if !ok {
			return fmt.Errorf("driver %T has no file control", dc)
		}
		_, err := fc.FileControlPersistWAL("main", 1)
		return err
	}); err != nil {
		return nil, fmt.Errorf("keep the WAL: %w", err)
	}
	var mode string
	if err := c.QueryRowContext(ctx, `PRAGMA journal_mode = wal`).Scan(&mode); err != nil || mode != "wal" {
		return nil, fmt.Errorf("WAL mode (got %q): %v", mode, err)
	}
	for _, q := range []string{
		`CREATE TABLE IF NOT EXISTS _litestream_seq (id INTEGER PRIMARY KEY, seq INTEGER)`,
		`INSERT INTO _litestream_seq (id, seq) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET seq = seq + 1`,
	} {
		if _, err := c.ExecContext(ctx, q); err != nil {
			return nil, fmt.Errorf("first change: %w", err)
		}
	}
	hdr := make([]byte, litestream.WALHeaderSize)
	w, err := os.Open(db.WALPath())
	if err != nil {
		return nil, err
	}
	_, err = io.ReadFull(w, hdr)
	w.Close()
	if err != nil {
		return nil, fmt.Errorf("read WAL header: %w", err)
	}
	pageSize := binary.BigEndian.Uint32(hdr[8:])
	dir := db.LTXLevelDir(0)
	if err := os.MkdirAll(dir, fsutil.DataDir); err != nil {
		return nil, err
	}
	path := db.LTXPath(0, txid, txid)
	err = fsutil.WriteAtomic(path, fsutil.DataFile, func(f *os.File) error {
		enc, err := ltx.NewEncoder(f)
		if err != nil {
			return err
		}
		if err := enc.EncodeHeader(ltx.Header{
			Version: ltx.Version, Flags: ltx.HeaderFlagNoChecksum, PageSize: pageSize, Commit: pages,
			MinTXID: txid, MaxTXID: txid, Timestamp: time.Now().UnixMilli(),
			WALOffset: litestream.WALHeaderSize, WALSalt1: binary.BigEndian.Uint32(hdr[16:]), WALSalt2: binary.BigEndian.Uint32(hdr[20:]),
		}); err != nil {
			return fmt.Errorf("encode seed LTX: %w", err)
		}
		if err := enc.Close(); err != nil {
			return fmt.Errorf("encode seed LTX: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	ok = true
	return conn, nil
}

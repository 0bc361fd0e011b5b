package walship

import (
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/benbjohnson/litestream"
	"github.com/superfly/ltx"
)

// walRestartedInPlace reports whether the database's WAL was restarted
// (new salts) since Litestream's newest local file while the frames that
// file ended with are still in it. Litestream, resuming, then takes the
// old frames as proof that nothing was lost and reads the new WAL from
// its start: what was committed after its last capture and checkpointed
// before the restart is never captured. (A WAL truncated or removed
// instead makes it capture the whole database, which walship reduces to
// the changed pages.)
func walRestartedInPlace(db *litestream.DB, newest ltx.TXID) (bool, error) {
	f, err := os.Open(db.LTXPath(0, newest, newest))
	if err != nil {
		return false, err
	}
	dec := ltx.NewDecoder(f)
	err = dec.DecodeHeader()
	f.Close()
	if err != nil {
		return false, fmt.Errorf("local LTX %d: %w", newest, err)
	}
	h := dec.Header()
	if h.WALSalt1 == 0 && h.WALSalt2 == 0 {
		return false, nil // not captured from a WAL (a snapshot or a seed)
	}
	w, err := os.Open(db.WALPath())
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer w.Close()
	st, err := w.Stat()
	if err != nil {
		return false, err
	}
	hdr := make([]byte, litestream.WALHeaderSize)
	if _, err := io.ReadFull(w, hdr); err != nil {
		return false, nil // no header: Litestream captures the whole database
	}
	restarted := binary.BigEndian.Uint32(hdr[16:]) != h.WALSalt1 || binary.BigEndian.Uint32(hdr[20:]) != h.WALSalt2
	return restarted && st.Size() >= h.WALOffset+h.WALSize, nil
}

// truncateWAL checkpoints the whole WAL into the database and truncates
// it, so that Litestream captures the whole database (reduced by walship
// to the pages that changed). It fails if a reader keeps the WAL in use.
func truncateWAL(ctx context.Context, path string) error {
	conn, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)")
	if err != nil {
		return err
	}
	defer conn.Close()
	var busy, logFrames, checkpointed int
	if err := conn.QueryRowContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`).Scan(&busy, &logFrames, &checkpointed); err != nil {
		return err
	}
	if busy != 0 {
		return fmt.Errorf("the WAL is in use (%d frames, %d checkpointed)", logFrames, checkpointed)
	}
	return nil
}

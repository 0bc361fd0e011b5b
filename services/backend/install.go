package backend

import (
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	_ "modernc.org/sqlite"

	"github.com/convex-cluster-manager/ccm/shared/fsutil"
	"github.com/convex-cluster-manager/ccm/shared/replica"
)

// install moves the drained shadow database at shadow into the data path as
// db, atomically (rename in the same directory) and in WAL mode. Whatever
// database was there, with its -wal and -shm, is moved to the set-aside
// directory setAside first. It returns setAside if it moved anything there.
// It refuses a shadow still open for applying (ccm-walapply must release it
// first).
func install(shadow, db, setAside string) (string, error) {
	release, err := replica.Hold(shadow)
	if err != nil {
		return "", fmt.Errorf("install the shadow database: %w", err)
	}
	defer release()
	if err := os.MkdirAll(filepath.Dir(db), fsutil.DataDir); err != nil {
		return "", err
	}
	if err := setWALMode(shadow); err != nil {
		return "", err
	}
	// Stage the new file beside the target so that the final rename is
	// atomic even when the shadow lives on another file system.
	staged := db + ".ccm-incoming"
	if err := moveFile(shadow, staged); err != nil {
		return "", fmt.Errorf("stage the shadow database: %w", err)
	}
	aside := ""
	for _, suffix := range []string{"", "-wal", "-shm"} {
		old := db + suffix
		if _, err := os.Stat(old); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if aside == "" {
			aside = setAside
			if err := os.MkdirAll(aside, fsutil.DataDir); err != nil {
				return "", err
			}
		}
		if err := os.Rename(old, filepath.Join(aside, filepath.Base(old))); err != nil {
			return "", fmt.Errorf("set aside %s: %w", old, err)
		}
	}
	// The shadow's page sums (its chain position) go with it; those of the
	// database set aside describe nothing any more.
	if err := replica.MoveSums(shadow, db); err != nil {
		return aside, fmt.Errorf("install the page sums: %w", err)
	}
	if err := os.Rename(staged, db); err != nil {
		return aside, fmt.Errorf("install the database: %w", err)
	}
	if err := fsutil.SyncDir(filepath.Dir(db)); err != nil {
		return aside, err
	}
	// The shadow's bookkeeping belongs to the file that just moved away.
	return aside, replica.Reset(shadow)
}

// ensureDatabase creates an empty database in WAL mode at path unless a
// database is there: a new cluster's first leader has nothing to install,
// and WAL shipping needs a database to open before the backend starts.
func ensureDatabase(path string) (bool, error) {
	if st, err := os.Stat(path); err == nil && st.Size() > 0 {
		return false, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), fsutil.DataDir); err != nil {
		return false, err
	}
	// Created here with ccm's data mode (SQLite's own, 0644, would leave
	// the backend's group without write access); its -wal and -shm take
	// the same mode.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, fsutil.DataFile)
	if err != nil {
		return false, err
	}
	f.Close()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		return false, err
	}
	defer db.Close()
	if _, err := db.Exec(`PRAGMA journal_mode=WAL`); err != nil {
		return false, fmt.Errorf("create %s: %w", path, err)
	}
	return true, nil
}

// setWALMode makes the database header say WAL (file format read and write
// versions 2), so SQLite opens it in WAL mode; a shadow copied from a
// Litestream-managed leader already does.
func setWALMode(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open shadow database: %w", err)
	}
	defer f.Close()
	hdr := make([]byte, 20)
	if _, err := io.ReadFull(f, hdr); err != nil {
		return fmt.Errorf("shadow database %s has no SQLite header: %w", path, err)
	}
	if string(hdr[:16]) != "SQLite format 3\x00" {
		return fmt.Errorf("shadow database %s is not an SQLite database", path)
	}
	if hdr[18] == 2 && hdr[19] == 2 {
		return nil
	}
	if _, err := f.WriteAt([]byte{2, 2}, 18); err != nil {
		return err
	}
	return f.Sync()
}

// moveFile renames src to dst, copying (with fsync) across file systems.
func moveFile(src, dst string) error {
	if err := os.Rename(src, dst); err == nil {
		return nil
	}
	if err := fsutil.CopyFile(src, dst, fsutil.DataFile); err != nil {
		return err
	}
	return os.Remove(src)
}

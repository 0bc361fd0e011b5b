package replica

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// SQLite's lock bytes (unix VFS): the database file's pending, reserved
// and shared bytes, and the -shm file's "DMS" byte, on which every
// connection in WAL mode holds a read lock for as long as it is open.
const (
	sqlitePendingByte = 0x40000000
	sqliteLockBytes   = 2 + 510 // reserved byte and the shared range after it
	sqliteShmDMS      = 128
)

// ErrInUse means another process has the database open.
var ErrInUse = errors.New("the database is open in another process")

// lockUnused takes write locks on dbPath's SQLite lock bytes, which
// succeeds only if no connection (of any process, this one included) has
// the database open in WAL mode or in a transaction, and keeps new
// connections out until unlock. The locks are open-file-description
// locks, so they conflict with SQLite's POSIX locks in this process too.
func lockUnused(dbPath string) (unlock func(), err error) {
	var files []*os.File
	unlock = func() {
		for _, f := range files {
			f.Close()
		}
	}
	lock := func(path string, start, n int64) error {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if errors.Is(err, fs.ErrNotExist) && path != dbPath {
			return nil // no -shm: no connection in WAL mode
		}
		if err != nil {
			return err
		}
		files = append(files, f)
		lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: start, Len: n}
		if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
				return fmt.Errorf("%w: %s is locked", ErrInUse, path)
			}
			return fmt.Errorf("lock %s: %w", path, err)
		}
		return nil
	}
	if err := lock(dbPath, sqlitePendingByte, sqliteLockBytes); err != nil {
		unlock()
		return nil, err
	}
	if err := lock(dbPath+"-shm", sqliteShmDMS, 1); err != nil {
		unlock()
		return nil, err
	}
	return unlock, nil
}

package replica

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// ErrHeld means the shadow database is open for applying (by ccm-walapply):
// it must be released before anything else moves or writes it.
var ErrHeld = errors.New("the shadow database is held by its writer")

// hold takes an exclusive flock on f, an open shadow database at path, for
// as long as f stays open. flock locks are apart from SQLite's (fcntl)
// locks, so SQLite readers of the file are not affected.
func hold(f *os.File, path string) error {
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("%w: %s", ErrHeld, path)
		}
		return fmt.Errorf("lock %s: %w", path, err)
	}
	return nil
}

// Hold keeps the shadow database at path from being opened for applying
// until release, and fails with ErrHeld if it is open for applying now: a
// shadow moved or replaced under its writer would take that writer's
// later pages.
func Hold(path string) (release func(), err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	if err := hold(f, path); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

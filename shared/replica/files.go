package replica

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// sidecars are the files walapply keeps beside the shadow database.
func sidecars(dbPath string) []string {
	j := dbPath + ".ccm-incoming"
	return []string{positionFile(dbPath), positionFile(dbPath) + ".tmp", j, j + ".apply", CheckpointPath(dbPath),
		SumsPath(dbPath), SumsPath(dbPath) + ".tmp", sumsLog(SumsPath(dbPath)), dbPath + ".ccm-adopt"}
}

// Exists reports whether a shadow database or its position is at dbPath.
func Exists(dbPath string) bool {
	for _, p := range append([]string{dbPath}, positionFile(dbPath)) {
		if st, err := os.Stat(p); err == nil && st.Size() > 0 {
			return true
		}
	}
	return false
}

// Reset removes the shadow database at dbPath and everything walapply
// keeps beside it, so that the next start replays from nothing.
func Reset(dbPath string) error {
	for _, p := range append([]string{dbPath}, sidecars(dbPath)...) {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", p, err)
		}
	}
	return nil
}

// Install records pos for a database file just put at dbPath whose
// checksum the caller verified as it wrote it (a snapshot download, an
// adopted copy). walapply verifies the whole file again when it opens it.
func Install(dbPath string, pos Position) error {
	for _, p := range sidecars(dbPath) {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", p, err)
		}
	}
	sh, err := OpenShadow(dbPath)
	if err != nil {
		return err
	}
	defer sh.Close()
	return sh.SetPosition(pos)
}

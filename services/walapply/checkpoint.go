package walapply

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// Checkpoint is a consistent copy of the shadow database for a snapshot.
type Checkpoint struct {
	Path     string   `json:"path"`
	Position Position `json:"position"`
	Size     int64    `json:"size"`
}

// checkpointPath is where Checkpoint copies the shadow database.
func checkpointPath(dbPath string) string { return dbPath + ".ccm-snapshot" }

// Checkpoint copies the shadow database, with applying held off for the
// length of the copy, so that the copy is exactly the recorded position.
// The caller removes the copy when done.
func (d *Daemon) Checkpoint() (Checkpoint, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.failed != nil {
		return Checkpoint{}, fmt.Errorf("replication stopped: %w", d.failed)
	}
	if d.applier == nil {
		return Checkpoint{}, errors.New("no shadow database")
	}
	pos := d.applier.Position()
	if pos.PageSize == 0 {
		return Checkpoint{}, errors.New("the shadow database is empty: nothing applied yet")
	}
	dst := checkpointPath(d.shadow.Path())
	n, err := copyFile(dst, d.shadow.f)
	if err != nil {
		os.Remove(dst)
		return Checkpoint{}, err
	}
	return Checkpoint{Path: dst, Position: pos, Size: n}, nil
}

func copyFile(dst string, src *os.File) (int64, error) {
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return 0, fmt.Errorf("create %s: %w", dst, err)
	}
	n, err := io.Copy(out, io.NewSectionReader(src, 0, 1<<62))
	if err != nil {
		out.Close()
		return n, fmt.Errorf("copy shadow database: %w", err)
	}
	if err := out.Close(); err != nil {
		return n, err
	}
	return n, nil
}

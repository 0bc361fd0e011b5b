package replica

import (
	"fmt"
	"io"
	"os"

	"github.com/convex-cluster-manager/ccm/shared/fsutil"
)

// Checkpoint is a consistent copy of a shadow database for a snapshot.
type Checkpoint struct {
	Path     string   `json:"path"`
	Position Position `json:"position"`
	Size     int64    `json:"size"`
}

// CheckpointPath is where a checkpoint of the shadow database at dbPath is
// copied.
func CheckpointPath(dbPath string) string { return dbPath + ".ccm-snapshot" }

// Checkpoint copies the shadow database beside itself (CheckpointPath). The
// caller must hold off applying for the length of the copy, so that the
// copy is exactly the recorded position, and removes the copy when done.
func (s *Shadow) Checkpoint() (Checkpoint, error) {
	dst := CheckpointPath(s.path)
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, fsutil.DataFile)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("create %s: %w", dst, err)
	}
	n, err := io.Copy(out, io.NewSectionReader(s.f, 0, 1<<62))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst)
		return Checkpoint{}, fmt.Errorf("copy shadow database: %w", err)
	}
	return Checkpoint{Path: dst, Position: s.pos, Size: n}, nil
}

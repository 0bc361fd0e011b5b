package walapply

import (
	"errors"
	"fmt"

	"github.com/convex-cluster-manager/ccm/shared/replica"
)

// Checkpoint copies the shadow database, with applying held off for the
// length of the copy, so that the copy is exactly the recorded position.
// The caller removes the copy when done.
func (d *Daemon) Checkpoint() (replica.Checkpoint, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.failed != nil {
		return replica.Checkpoint{}, fmt.Errorf("replication stopped: %w", d.failed)
	}
	if d.applier == nil {
		return replica.Checkpoint{}, errors.New("no shadow database")
	}
	if d.applier.Position().PageSize == 0 {
		return replica.Checkpoint{}, errors.New("the shadow database is empty: nothing applied yet")
	}
	return d.shadow.Checkpoint()
}

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
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	d.mu.Lock()
	failed, shadow, complete := d.failed, d.shadow, d.pos.Complete()
	d.mu.Unlock()
	switch {
	case failed != nil:
		return replica.Checkpoint{}, fmt.Errorf("replication stopped: %w", failed)
	case shadow == nil:
		return replica.Checkpoint{}, errors.New("no shadow database")
	case !complete:
		return replica.Checkpoint{}, errors.New("the shadow database is empty: nothing applied yet")
	}
	return shadow.Checkpoint()
}

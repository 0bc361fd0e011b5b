package backend

import (
	"context"
	"time"
)

// deadman kills the backend's processes the moment the lease ends, on its
// own timer: the reconcile loop may be inside a systemd query, a health
// check or a prepare when the deadline passes (a frozen node resuming),
// and the backend must not serve a moment longer than it has to. It only
// signals the unit's cgroup; reconcile then stops the unit through systemd
// and logs it (its loop wakes at the deadline too).
func (d *Daemon) deadman(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		changed := d.roles.Changed()
		_, deadline, leading := d.roles.Leading(time.Now())
		t.Reset(time.Hour)
		if leading {
			t.Reset(time.Until(deadline))
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-t.C:
			if _, _, still := d.roles.Leading(time.Now()); leading && !still {
				d.unit.signalGroup(sigKill)
			}
		}
	}
}

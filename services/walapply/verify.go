package walapply

import (
	"errors"
	"fmt"
	"time"

	"github.com/convex-cluster-manager/ccm/shared/replica"
)

// errVerifyLater refuses a verification that would give a false verdict
// or hold a promotion back.
var errVerifyLater = errors.New("verify again later")

// Verify reads the whole shadow, with applying held off meanwhile, and
// compares it with the page sums of its position. A shadow that differs
// from what was applied stops replication: it must not be promoted; it
// is kept for inspection until the operator resyncs it (ccm join --force),
// and every later Verify returns the verification that found it.
func (d *Daemon) Verify() (replica.Verification, error) {
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	d.mu.Lock()
	failed, diverged, shadow, applier, promoting := d.failed, d.diverged, d.shadow, d.applier, d.leading || d.drainTo > 0
	d.mu.Unlock()
	switch {
	case diverged != nil:
		return *diverged, nil
	case failed != nil:
		return replica.Verification{}, fmt.Errorf("replication stopped: %w", failed)
	case shadow == nil:
		return replica.Verification{}, errors.New("no shadow database (released for a promotion, or not open yet)")
	case promoting:
		return replica.Verification{}, fmt.Errorf("%w: this node is being promoted", errVerifyLater)
	case applier.Assembling():
		return replica.Verification{}, fmt.Errorf("%w: a file is being received", errVerifyLater)
	}
	start := time.Now()
	c, err := shadow.Check()
	if err != nil {
		return replica.Verification{}, err
	}
	v := replica.Verification{Position: shadow.Position(), Check: c, ElapsedMs: time.Since(start).Milliseconds()}
	d.metrics.verify.Record(v)
	if !c.Consistent() {
		d.mu.Lock()
		d.diverged = &v
		d.mu.Unlock()
		d.fail(fmt.Errorf("%w at epoch %d TXID %d: %s", replica.ErrDiverged, v.Position.Epoch, v.Position.TXID, c))
		d.poke()
		return v, nil
	}
	d.log.Info("shadow verified", "epoch", v.Position.Epoch, "txid", v.Position.TXID, "pages", c.Pages, "elapsed", time.Since(start).Round(time.Millisecond))
	return v, nil
}

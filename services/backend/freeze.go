package backend

import (
	"context"
	"fmt"
	"time"

	"github.com/convex-cluster-manager/ccm/shared/natsconn"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// guardEvery is how often the serving leader asks ccm-walship whether its
// committed changes are shipped.
const guardEvery = 100 * time.Millisecond

// guard freezes the backend (its processes stopped, kept with their
// state) while the serving leader's committed changes have waited longer
// than wal.maxUnshippedMs to be appended to the WAL stream, and thaws it
// when they are shipped again: a leader cut off from NATS acknowledged
// writes until its lease ended (9 s of them lost at TTL 10 s). No answer
// from ccm-walship counts as nothing shipped since the last answer. When
// the lease ends, reconcile kills the frozen backend as any other.
func (d *Daemon) guard(ctx context.Context) {
	bound := d.cfg.WAL.MaxUnshipped()
	if bound == 0 {
		return
	}
	// Frozen early enough that no write acknowledged more than the bound
	// before the freeze is unshipped: a change waits up to a capture
	// interval before walship sees it, and the freeze up to a tick.
	limit := max(bound-guardEvery-d.cfg.WAL.CaptureInterval(), bound/2)
	t := time.NewTicker(guardEvery)
	defer t.Stop()
	var current time.Time // until when every committed change was shipped, as last learned
	thawed := false       // a thaw was sent since serving began (a restarted ccm-backend may find its backend frozen)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		epoch, _, _ := d.roles.Leading(time.Now())
		if _, serving := d.roles.Serving(time.Now()); !serving {
			current, thawed = time.Time{}, false
			continue // not serving: a frozen backend is killed or stopped by reconcile or Stop
		}
		asked := time.Now()
		first := current.IsZero()
		if first {
			current = asked // serving just began: the bound counts from here
		}
		// Before a freeze, a request that goes unanswered (NATS cut off)
		// ends when the limit is reached, so the freeze comes then, not a
		// timeout later; once frozen, a slow answer must still thaw it.
		wait := 3 * guardEvery
		if !d.isFrozen() {
			wait = min(wait, max(limit-asked.Sub(current), 10*time.Millisecond))
		}
		shipped, why := d.askShipped(ctx, epoch, asked, wait)
		// The first answer counts even if older: a ccm-backend restarted
		// under a serving backend must count the wait that passed while it
		// was down (a kill -9 of it let a cut-off leader acknowledge 7 s of
		// writes that were then lost).
		if shipped.After(current) || first && !shipped.IsZero() {
			current = shipped
		}
		behind := time.Since(current)
		switch frozen := d.isFrozen(); {
		case behind > limit && !frozen:
			d.freeze(fmt.Sprintf("%s (%s behind, bound %s)", why, behind.Round(time.Millisecond), bound))
		case behind <= limit && (frozen || !thawed):
			d.thaw(frozen, behind)
			thawed = true
		}
	}
}

// askShipped asks ccm-walship, waiting at most wait, until when every
// committed change was shipped (asked, less how long its oldest unshipped
// change waited), or says why it cannot tell.
func (d *Daemon) askShipped(ctx context.Context, epoch uint64, asked time.Time, wait time.Duration) (time.Time, string) {
	reply, err := natsconn.CallJSON[struct {
		Status schema.ShipStatus `json:"status"`
	}](ctx, d.nc, d.cfg.ClusterID, d.cfg.NodeID, schema.ServiceWalship, schema.VerbStatus, nil, wait)
	if err != nil {
		return time.Time{}, "ccm-walship does not answer: " + err.Error()
	}
	st := reply.Status
	switch {
	case !st.Shipping || st.Epoch != epoch:
		return time.Time{}, fmt.Sprintf("ccm-walship does not ship epoch %d (shipping %v, epoch %d, error %q)", epoch, st.Shipping, st.Epoch, st.Error)
	case st.UnshippedTXIDs > 0:
		return asked.Add(-time.Duration(st.UnshippedMs) * time.Millisecond),
			fmt.Sprintf("%d captured transactions not appended to the WAL stream", st.UnshippedTXIDs)
	}
	return asked, ""
}

func (d *Daemon) isFrozen() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return !d.frozenAt.IsZero()
}

// freeze stops the backend's processes: it acknowledges nothing more.
func (d *Daemon) freeze(why string) {
	d.unit.signalGroup(sigStop)
	d.mu.Lock()
	d.frozenAt, d.frozenWhy = time.Now(), why
	d.mu.Unlock()
	d.frozen.Set(1)
	d.freezes.Inc()
	d.log.Warn("backend frozen: the leader's committed changes are not shipped", "reason", why)
}

// thaw lets the backend's processes run again (also when it was not known
// to be frozen: a restarted ccm-backend does not know).
func (d *Daemon) thaw(frozen bool, behind time.Duration) {
	d.unit.signalGroup(sigCont)
	d.mu.Lock()
	at := d.frozenAt
	d.frozenAt, d.frozenWhy = time.Time{}, ""
	d.mu.Unlock()
	d.frozen.Set(0)
	if frozen {
		d.log.Info("backend thawed: shipping caught up", "frozen_for", time.Since(at).Round(time.Millisecond), "behind", behind.Round(time.Millisecond))
	}
}

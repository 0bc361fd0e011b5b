package backend

import (
	"context"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"
)

const (
	// abortKillTimeout bounds the kill made on the way out of a watchdog abort.
	abortKillTimeout = 2 * time.Second
	// abortWaitMax bounds how long a watchdog abort waits for a lease to
	// end; systemd kills the unit TimeoutStopSec (15 s) after the abort.
	abortWaitMax = 12 * time.Second
	// renewedBy is how far a lease's deadline must move to count as
	// renewed: a boot-clock deadline placed on the wall clock jitters.
	renewedBy = 100 * time.Millisecond
)

// enforceOnAbort handles the SIGABRT of systemd's watchdog until ctx ends:
// before dying as usual (goroutine dump, restart), it kills the
// backend if the lease this node held has ended, waiting for its deadline
// if it is still running and not renewed. After a freeze (a paused VM or
// container) the watchdog fires at the resume, before the loop can act on
// the lease that ended meanwhile, and the restarted ccm-backend killed the
// backend only 1.6 s later, beside the new leader's; a watchdog that fires
// shortly before the deadline left it to the restarted daemon too (4.6 s).
func (d *Daemon) enforceOnAbort(ctx context.Context) {
	abort := make(chan os.Signal, 1)
	signal.Notify(abort, syscall.SIGABRT)
	defer signal.Stop(abort)
	select {
	case <-ctx.Done():
		return
	case <-abort:
	}
	// systemd sends the abort to every process of the unit, again and
	// again until they are gone: the systemctl children making the kill
	// died of it too. Ignored here, it is ignored in them (an ignored
	// signal survives exec).
	signal.Ignore(syscall.SIGABRT)
	if d.leaseEnds(time.Now().Add(abortWaitMax)) {
		kctx, cancel := context.WithTimeout(context.Background(), abortKillTimeout)
		err := d.unit.kill(kctx)
		cancel()
		d.log.Error("aborted by the watchdog while not leading: killed the backend before exiting", "unit", d.unit.unit, "err", err)
	}
	// Die as the abort would have (an ignored signal cannot be restored
	// to Go's handler, so a re-raise would be ignored too): every
	// goroutine's stack, exit status 2.
	debug.SetTraceback("all")
	panic("aborted by systemd's watchdog")
}

// leaseEnds reports whether the node does not lead, waiting (until limit
// at most) for the deadline of a lease it holds: false when the lease is
// renewed meanwhile or outlasts limit, or when the tracker has not settled.
func (d *Daemon) leaseEnds(limit time.Time) bool {
	_, first, leading := d.roles.Leading(time.Now())
	for {
		now := time.Now()
		if !d.roles.Settled(now) {
			return false
		}
		_, deadline, ok := d.roles.Leading(now)
		switch {
		case !ok:
			return true
		case !leading || deadline.Sub(first) > renewedBy || deadline.After(limit):
			return false // a lease taken or renewed after the abort, or one too long to wait for
		}
		time.Sleep(min(time.Until(deadline)+time.Millisecond, 50*time.Millisecond))
	}
}

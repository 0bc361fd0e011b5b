package backend

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// abortKillTimeout bounds the kill made on the way out of a watchdog abort.
const abortKillTimeout = 2 * time.Second

// enforceOnAbort handles the SIGABRT of systemd's watchdog until ctx ends:
// before dying as usual (re-raised: goroutine dump, restart), it kills the
// backend if the lease this node held has ended. After a freeze (a paused
// VM or container) the watchdog fires at the resume, before the loop can
// act on the lease that ended meanwhile, and the restarted ccm-backend
// killed the backend only 1.6 s later, beside the new leader's.
func (d *Daemon) enforceOnAbort(ctx context.Context) {
	abort := make(chan os.Signal, 1)
	signal.Notify(abort, syscall.SIGABRT)
	defer signal.Stop(abort)
	select {
	case <-ctx.Done():
		return
	case <-abort:
	}
	if d.roles.Settled(time.Now()) {
		if _, _, leading := d.roles.Leading(time.Now()); !leading {
			kctx, cancel := context.WithTimeout(context.Background(), abortKillTimeout)
			err := d.unit.kill(kctx)
			cancel()
			d.log.Error("aborted by the watchdog while not leading: killed the backend before exiting", "unit", d.unit.unit, "err", err)
		}
	}
	signal.Reset(syscall.SIGABRT)
	syscall.Kill(os.Getpid(), syscall.SIGABRT)
}

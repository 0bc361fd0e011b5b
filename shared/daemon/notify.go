package daemon

import (
	"context"
	"log/slog"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// supervise speaks sd_notify for d: READY=1 once d is ready, WATCHDOG=1 at
// half the unit's WatchdogSec while d is healthy, and STATUS= lines when the
// status changes. Outside systemd every notification is a no-op.
func supervise(ctx context.Context, d Daemon, log *slog.Logger) error {
	select {
	case <-d.Ready():
		notify(log, "READY=1")
		log.Info("ready")
	case <-ctx.Done():
		return nil
	}
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn("ignoring invalid watchdog settings", "err", err)
	}
	tick := time.Second
	if interval > 0 {
		tick = interval / 2
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	lastStatus, lastHealth := "", error(nil)
	for {
		if line := d.StatusLine(); line != lastStatus {
			notify(log, "STATUS="+line)
			lastStatus = line
		}
		herr := d.Healthy()
		if herr == nil && interval > 0 {
			notify(log, "WATCHDOG=1")
		}
		if (herr == nil) != (lastHealth == nil) {
			if herr != nil {
				log.Warn("unhealthy: withholding watchdog", "err", herr)
			} else {
				log.Info("healthy again")
			}
		}
		lastHealth = herr
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func notify(log *slog.Logger, state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		log.Warn("sd_notify failed", "state", state, "err", err)
	}
}

package daemon

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// ErrPermanent marks an error that Retry must not retry.
var ErrPermanent = errors.New("permanent")

// Retry calls fn, each attempt bounded by 5 s, every second until it
// succeeds, returns an error wrapping ErrPermanent, or ctx ends. It logs
// each failure as waiting for what: daemons start before NATS is reachable.
func Retry(ctx context.Context, log *slog.Logger, what string, fn func(ctx context.Context) error) error {
	for {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := fn(actx)
		cancel()
		if err == nil || errors.Is(err, ErrPermanent) {
			return err
		}
		log.Warn("waiting for "+what, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

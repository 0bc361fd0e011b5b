package daemon

import (
	"fmt"
	"sync/atomic"
	"time"
)

// Loop records when a daemon's control loop last went round, for its
// health check: a loop stuck in a call it should have bounded is a hung
// daemon, and the watchdog restarts it.
type Loop struct {
	at atomic.Int64 // unix ns
}

// Beat records a round of the loop now (and a daemon's start, in New).
func (l *Loop) Beat() { l.at.Store(time.Now().UnixNano()) }

// Stalled returns an error naming the loop if its last round is older than
// limit.
func (l *Loop) Stalled(name string, limit time.Duration) error {
	at := time.Unix(0, l.at.Load())
	if time.Since(at) > limit {
		return fmt.Errorf("%s loop stalled since %s", name, at.Format(time.RFC3339))
	}
	return nil
}

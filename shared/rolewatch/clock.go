package rolewatch

import (
	"time"

	"golang.org/x/sys/unix"
)

// BootTime reads the host's CLOCK_BOOTTIME: the time since boot, counting
// suspension, which no one can step. Every process of a node reads the
// same clock, so a node's role-event deadline on it (schema.RoleEvent's
// DeadlineBoot) means the same instant to all of its daemons, whatever
// the wall clock does.
func BootTime() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		panic("read CLOCK_BOOTTIME: " + err.Error()) // Linux only; never fails there
	}
	return time.Duration(ts.Nano())
}

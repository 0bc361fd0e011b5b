package daemon

import (
	"os"
	"runtime/debug"
)

// LimitMemory sets the daemon's soft memory limit (Spec.MemoryLimit): the
// garbage collector works harder as the heap nears it, instead of letting
// it grow to twice what is live. GOMEMLIMIT in the environment (systemd's
// Environment=) wins.
func LimitMemory(spec Spec) {
	if spec.MemoryLimit > 0 && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(spec.MemoryLimit)
	}
}

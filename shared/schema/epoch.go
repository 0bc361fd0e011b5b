package schema

import "sync"

// EpochGate admits events in epoch order: anything older than the newest
// epoch it has admitted is stale and must be ignored.
type EpochGate struct {
	mu     sync.Mutex
	newest uint64
}

// Admit reports whether an event of epoch e may be acted on, and records e.
func (g *EpochGate) Admit(e uint64) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if e < g.newest {
		return false
	}
	g.newest = e
	return true
}

// Newest returns the newest epoch admitted so far.
func (g *EpochGate) Newest() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.newest
}

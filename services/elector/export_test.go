package elector

import "time"

// SetPlacementTimings shortens the stream-leader placement timings for a
// test, before any elector starts; the returned func restores them.
func SetPlacementTimings(every, current time.Duration) (restore func()) {
	oldEvery, oldCurrent := placementEvery, currentFor
	placementEvery, currentFor = every, current
	return func() { placementEvery, currentFor = oldEvery, oldCurrent }
}

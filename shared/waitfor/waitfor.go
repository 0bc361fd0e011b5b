// Package waitfor is the tests' one way to wait for a condition: poll it
// until it holds, or fail naming what was seen last once the time is up.
package waitfor

import (
	"testing"
	"time"
)

// Tick is how often Cond polls.
const Tick = 20 * time.Millisecond

// Cond polls cond every Tick until it returns nil; once within has passed,
// it fails t with cond's last error, which should say what was seen and
// what was wanted.
func Cond(t testing.TB, within time.Duration, cond func() error) {
	t.Helper()
	Poll(t, within, Tick, cond)
}

// Poll is Cond polling every every: a condition that holds only briefly
// (a copy part-way through) needs a faster poll, a costly one a slower.
func Poll(t testing.TB, within, every time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %v", within, err)
		}
		time.Sleep(every)
	}
}

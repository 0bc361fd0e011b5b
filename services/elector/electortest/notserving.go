package electortest

import (
	"sync"
	"testing"
	"time"

	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// NotServing records the longest stretch in which a node held the leader
// key without serving (leader, not ready), sampled every 10 ms.
type NotServing struct {
	mu      sync.Mutex
	since   time.Time
	longest time.Duration
}

// WatchNotServing samples n's elector until the test ends.
func WatchNotServing(t testing.TB, n *Node) *NotServing {
	l := &NotServing{}
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	go func() {
		for {
			s := n.El.State()
			now := time.Now()
			l.mu.Lock()
			switch {
			case s.Role == schema.RoleLeader && !s.Ready && l.since.IsZero():
				l.since = now
			case s.Role != schema.RoleLeader || s.Ready:
				l.since = time.Time{}
			}
			if !l.since.IsZero() {
				l.longest = max(l.longest, now.Sub(l.since))
			}
			l.mu.Unlock()
			select {
			case <-done:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	return l
}

// Longest is the longest stretch seen so far.
func (l *NotServing) Longest() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.longest
}

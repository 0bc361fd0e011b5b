package walship

import (
	"testing"
	"time"
)

// TestUnshippedCountsFromTheOldestWaitingCapture: appends that keep
// succeeding while captures outpace them must not hide the backlog's age
// (ccm-backend freezes the backend on it): the wait is that of the oldest
// unshipped TXID, not the time since the last append.
func TestUnshippedCountsFromTheOldestWaitingCapture(t *testing.T) {
	var s Shipper
	t0 := time.Now().Add(-10 * time.Second)
	for txid := uint64(1); txid <= 8; txid++ {
		s.noteCaptured(txid, t0.Add(time.Duration(txid)*time.Second))
	}
	s.wrote(2, 100) // TXID 3, captured at t0+3s, waits now
	n, waited := s.Unshipped()
	if n != 6 {
		t.Fatalf("unshipped TXIDs = %d, want 6", n)
	}
	if want := time.Since(t0.Add(3 * time.Second)); waited < want-time.Second || waited > want+time.Second {
		t.Fatalf("the oldest unshipped TXID waited %s, want about %s", waited, want)
	}
	s.wrote(8, 100)
	if n, waited := s.Unshipped(); n != 0 || waited != 0 {
		t.Fatalf("all shipped: Unshipped = %d, %s; want 0, 0", n, waited)
	}
}

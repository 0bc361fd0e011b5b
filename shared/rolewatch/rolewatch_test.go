package rolewatch

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/convex-cluster-manager/ccm/shared/schema"
)

func TestLeading(t *testing.T) {
	tr := &Tracker{node: "n1", log: slog.New(slog.NewTextHandler(io.Discard, nil)), changed: make(chan struct{})}
	now := time.Now()
	steps := []struct {
		ev       schema.RoleEvent
		at       time.Time
		admitted bool
		leading  bool
		epoch    uint64
	}{
		{schema.RoleEvent{Role: schema.RoleLeader, Epoch: 5, Deadline: now.Add(time.Second)}, now, true, true, 5},
		{schema.RoleEvent{Role: schema.RoleLeader, Epoch: 5, Deadline: now.Add(time.Second)}, now.Add(time.Second), true, false, 5}, // deadline passed
		{schema.RoleEvent{Role: schema.RoleLeader, Epoch: 4, Deadline: now.Add(time.Hour)}, now.Add(time.Second), false, false, 5},  // stale: its later deadline is ignored
		{schema.RoleEvent{Role: schema.RolePassive, Epoch: 5}, now, true, false, 5},
		{schema.RoleEvent{Role: schema.RoleLeader, Epoch: 9, Deadline: now.Add(time.Second)}, now, true, true, 9},
	}
	for i, s := range steps {
		if got := tr.Observe(s.ev); got != s.admitted {
			t.Fatalf("step %d: admitted %v, want %v", i, got, s.admitted)
		}
		epoch, _, ok := tr.Leading(s.at)
		if ok != s.leading || epoch != s.epoch {
			t.Fatalf("step %d: Leading = %d %v, want %d %v", i, epoch, ok, s.epoch, s.leading)
		}
	}
}

func TestSettled(t *testing.T) {
	now := time.Now()
	tr := &Tracker{node: "n1", log: slog.New(slog.NewTextHandler(io.Discard, nil)), settles: now.Add(3 * time.Second), changed: make(chan struct{})}
	if tr.Settled(now) {
		t.Fatal("settled before any event and before the TTL passed")
	}
	if !tr.Settled(now.Add(3 * time.Second)) {
		t.Fatal("not settled once the TTL passed: a lease from before the restart would outlive its deadline")
	}
	tr.Observe(schema.RoleEvent{Node: "n1", Role: schema.RolePassive, Epoch: 1})
	if !tr.Settled(now) {
		t.Fatal("not settled after an event")
	}
}

func TestWaitLeading(t *testing.T) {
	tr := &Tracker{node: "n1", log: slog.New(slog.NewTextHandler(io.Discard, nil)), changed: make(chan struct{})}
	go func() {
		time.Sleep(50 * time.Millisecond)
		tr.Observe(schema.RoleEvent{Node: "n1", Role: schema.RoleLeader, Epoch: 5, Deadline: time.Now().Add(time.Minute)})
	}()
	if err := tr.WaitLeading(context.Background(), 5, 2*time.Second); err != nil {
		t.Fatalf("event for epoch 5 arrived, but: %v", err)
	}
	if err := tr.WaitLeading(context.Background(), 6, 100*time.Millisecond); !errors.Is(err, ErrNotLeading) {
		t.Fatalf("no event for epoch 6: got %v, want ErrNotLeading", err)
	}
}

package rolewatch

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/shared/natstest"
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
	require.NoErrorf(t, tr.WaitLeading(context.Background(), 5, 2*time.Second), "wait for the event of epoch 5")
	if err := tr.WaitLeading(context.Background(), 6, 100*time.Millisecond); !errors.Is(err, ErrNotLeading) {
		t.Fatalf("no event for epoch 6: got %v, want ErrNotLeading", err)
	}
}

// TestDeadlineIgnoresWallClockSteps steps the wall clock the tracker is
// given (never the machine's) both ways around a lease whose event
// carries its deadline on the boot clock: the lease is believed exactly
// as long as the boot clock says.
func TestDeadlineIgnoresWallClockSteps(t *testing.T) {
	boot := 100 * time.Second // the test's boot clock
	tr := &Tracker{node: "n1", log: slog.New(slog.NewTextHandler(io.Discard, nil)), changed: make(chan struct{}),
		boot: func() time.Duration { return boot }}
	wall := time.Now().Round(0) // a wall clock without Go's monotonic reading
	tr.Observe(schema.RoleEvent{Role: schema.RoleLeader, Epoch: 3, Deadline: wall.Add(5 * time.Second),
		DeadlineBoot: int64(boot + 5*time.Second)})

	// Forward step of 10 s: the wall deadline has passed, the lease has not.
	if _, d, ok := tr.Leading(wall.Add(10 * time.Second)); !ok || d.Sub(wall.Add(10*time.Second)) != 5*time.Second {
		t.Fatalf("after a forward step of the wall clock: leading %v until %v, want leading for 5s more", ok, d)
	}
	// 6 s later on the boot clock, with the wall clock stepped back an hour:
	// the lease has ended although the wall deadline lies ahead.
	boot += 6 * time.Second
	if _, _, ok := tr.Leading(wall.Add(-time.Hour)); ok {
		t.Fatal("after a backward step of the wall clock the ended lease is still believed")
	}
	// An event without a boot deadline (an older elector) uses the wall one.
	tr.Observe(schema.RoleEvent{Role: schema.RoleLeader, Epoch: 4, Deadline: wall.Add(5 * time.Second)})
	if _, _, ok := tr.Leading(wall); !ok {
		t.Fatal("an event with only a wall deadline is not believed")
	}
}

// TestBootTimeAdvances: the boot clock is readable and moves forward.
func TestBootTimeAdvances(t *testing.T) {
	a := BootTime()
	time.Sleep(10 * time.Millisecond)
	if b := BootTime(); a <= 0 || b-a < 10*time.Millisecond {
		t.Fatalf("boot clock %v then %v", a, b)
	}
}

// TestSubscribeSettlesFromTheLeaderKey: a daemon (re)starting on a node
// that the leader key does not name as serving leader knows at once that
// its node does not lead; one on the named node waits for the elector.
func TestSubscribeSettlesFromTheLeaderKey(t *testing.T) {
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv.ClientURL())
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ttl := 10 * time.Second
	settled := func(node string) bool {
		tr, err := Subscribe(nc, "c", node, ttl, log)
		require.NoError(t, err)
		defer tr.Close()
		return tr.Settled(time.Now())
	}
	if !settled("n1") {
		t.Fatal("no cluster state at all: not settled")
	}
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	kv, err := js.CreateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: schema.Bucket("c")})
	require.NoError(t, err)
	rec, _ := json.Marshal(schema.LeaderRecord{Node: "n2", Since: time.Now(), RenewedAt: time.Now(), LeaderTTLMs: ttl.Milliseconds()})
	if _, err := kv.Put(context.Background(), schema.KeyLeader, rec); err != nil {
		t.Fatal(err)
	}
	if !settled("n1") {
		t.Fatal("the key names n2: n1 is not settled at once")
	}
	if settled("n2") {
		t.Fatal("the key names n2: n2 settled without hearing from its elector")
	}
	rec, _ = json.Marshal(schema.LeaderRecord{Node: "n2", Since: time.Now(), RenewedAt: time.Now(), LeaderTTLMs: ttl.Milliseconds(), HandoverTo: "n3"})
	if _, err := kv.Put(context.Background(), schema.KeyLeader, rec); err != nil {
		t.Fatal(err)
	}
	if !settled("n2") {
		t.Fatal("n2 handed over: it is not settled at once")
	}
}

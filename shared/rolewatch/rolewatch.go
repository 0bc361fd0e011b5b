// Package rolewatch follows a node's role events for the daemons that act
// only while their node leads (walship, and later vip and backend). It is
// the dead-man switch of the fencing design: leadership is believed only
// until the deadline carried by the newest event.
package rolewatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// Tracker holds the newest role event of one node.
type Tracker struct {
	node    string
	log     *slog.Logger
	sub     *nats.Subscription
	settles time.Time            // when a lease granted before Subscribe has surely expired
	boot    func() time.Duration // BootTime; a test's clock in tests

	// confirm checks an event against the leader key (Confirm); nil in
	// tests that feed events to Observe.
	confirm func(schema.RoleEvent) error
	// confirmed is the epoch whose leader events the key confirmed last
	// (0 after an event that is not a leader's): its renewals need no
	// check. Only onMsg, one goroutine, uses it.
	confirmed uint64

	mu      sync.Mutex
	gate    schema.EpochGate
	last    schema.RoleEvent
	seen    bool
	changed chan struct{}
}

// Subscribe follows the role events of node in cluster. ttl is the
// cluster's leader TTL: no lease granted before Subscribe outlives it, so
// after ttl without an event the node surely does not lead (see Settled).
// It also reads the leader key once: if it does not name node as the
// serving leader, the node does not lead and the tracker is settled at
// once — a daemon restarted on a node that lost its lease meanwhile (a
// frozen node resuming, a watchdog kill) tears down at once instead of a
// TTL later.
func Subscribe(nc *nats.Conn, cluster, node string, ttl time.Duration, log *slog.Logger) (*Tracker, error) {
	t := &Tracker{node: node, log: log, settles: time.Now().Add(ttl), boot: BootTime, changed: make(chan struct{})}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	t.confirm = func(ev schema.RoleEvent) error {
		ctx, cancel := context.WithTimeout(context.Background(), min(ttl/2, 2*time.Second))
		defer cancel()
		return Confirm(ctx, js, cluster, ev)
	}
	sub, err := nc.Subscribe(schema.RoleSubject(cluster, node), t.onMsg)
	if err != nil {
		return nil, fmt.Errorf("subscribe to role events: %w", err)
	}
	t.sub = sub
	ctx, cancel := context.WithTimeout(context.Background(), min(ttl/2, 2*time.Second))
	defer cancel()
	if leader, err := keyLeader(ctx, js, cluster); err != nil {
		log.Info("leader key unreadable: waiting for a role event", "err", err)
	} else if leader != node {
		t.mu.Lock()
		t.settles = time.Now()
		t.mu.Unlock()
	}
	return t, nil
}

// keyLeader returns the node the leader key names as serving leader, ""
// if none.
func keyLeader(ctx context.Context, js jetstream.JetStream, cluster string) (string, error) {
	rec, _, err := readLeader(ctx, js, cluster)
	if err != nil || !rec.Serving() {
		return "", err
	}
	return rec.Node, nil
}

func (t *Tracker) onMsg(m *nats.Msg) {
	var ev schema.RoleEvent
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		t.log.Warn("ignoring invalid role event", "data", string(m.Data), "err", err)
		return
	}
	if ev.Node != t.node {
		return
	}
	leader := ev.Role == schema.RoleLeader
	if t.confirm != nil && (leader && ev.Epoch != t.confirmed || !leader && ev.Epoch > t.gate.Newest()) {
		if err := t.confirm(ev); err != nil {
			if leader {
				// Not believed: a real leader's next renewal is checked again.
				t.log.Warn("ignoring a role event the leader key does not confirm", "epoch", ev.Epoch, "err", err)
				return
			}
			// A revocation only stops things: it is acted on, but its
			// epoch does not shut out the ones below it.
			t.log.Warn("role event not confirmed by the leader key: acting on it without admitting its epoch", "role", ev.Role, "epoch", ev.Epoch, "err", err)
			t.confirmed = 0
			t.revoke(ev)
			return
		}
	}
	if leader {
		t.confirmed = ev.Epoch
	} else {
		t.confirmed = 0
	}
	t.Observe(ev)
}

// revoke records ev, an event by which the node does not lead, without
// admitting its epoch to the gate.
func (t *Tracker) revoke(ev schema.RoleEvent) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.last, t.seen = ev, true
	close(t.changed)
	t.changed = make(chan struct{})
}

// Observe records ev unless it is from an older epoch than one already seen.
func (t *Tracker) Observe(ev schema.RoleEvent) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.gate.Admit(ev.Epoch) {
		t.log.Debug("ignoring role event from an older epoch", "epoch", ev.Epoch, "newest", t.gate.Newest())
		return false
	}
	t.last, t.seen = ev, true
	close(t.changed)
	t.changed = make(chan struct{})
	return true
}

// Settled reports whether, at now, the tracker knows the node's role: an
// event has arrived, or the TTL since Subscribe has passed without one. A
// daemon restarted on the leader must not tear down what the leader runs
// before it has heard from the elector; the dead-man switch still holds,
// because a lease granted before the restart ends before Settled turns true.
func (t *Tracker) Settled(now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.seen || !now.Before(t.settles)
}

// Leading reports whether, at now, the node leads according to its newest
// event, and of which epoch until when. An event with a boot-clock
// deadline is judged on that clock alone (now only places the returned
// deadline): a step of the wall clock neither extends a lease nor cuts
// one short.
func (t *Tracker) Leading(now time.Time) (epoch uint64, deadline time.Time, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	ev := t.last
	if ev.DeadlineBoot != 0 {
		remaining := time.Duration(ev.DeadlineBoot) - t.boot()
		return ev.Epoch, now.Add(remaining), ev.Role == schema.RoleLeader && remaining > 0
	}
	if ev.Role != schema.RoleLeader || !now.Before(ev.Deadline) {
		return ev.Epoch, ev.Deadline, false
	}
	return ev.Epoch, ev.Deadline, true
}

// Serving reports whether, at now, the node is a leader whose promotion
// has finished (the event's Ready), and until when.
func (t *Tracker) Serving(now time.Time) (deadline time.Time, ok bool) {
	t.mu.Lock()
	ready := t.last.Ready
	t.mu.Unlock()
	_, deadline, leading := t.Leading(now)
	return deadline, leading && ready
}

// Prepared reports whether, at now, the node is a leader whose database is
// in place (the event's Prepared), of which epoch, and until when.
func (t *Tracker) Prepared(now time.Time) (epoch uint64, deadline time.Time, ok bool) {
	t.mu.Lock()
	prepared := t.last.Prepared
	t.mu.Unlock()
	epoch, deadline, leading := t.Leading(now)
	return epoch, deadline, leading && prepared
}

// Changed is closed when a newer event arrives.
func (t *Tracker) Changed() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.changed
}

// Close stops following.
func (t *Tracker) Close() { t.sub.Unsubscribe() }

// ErrNotLeading means the node's events did not say it leads an epoch.
var ErrNotLeading = errors.New("this node does not lead that epoch")

// WaitLeading waits up to within for an event saying the node leads epoch:
// a promotion step may be asked for before the event that announced the
// promotion has arrived.
func (t *Tracker) WaitLeading(ctx context.Context, epoch uint64, within time.Duration) error {
	deadline := time.After(within)
	for {
		changed := t.Changed()
		e, _, ok := t.Leading(time.Now())
		if ok && e == epoch {
			return nil
		}
		select {
		case <-changed:
		case <-time.After(50 * time.Millisecond): // a deadline may pass without an event
		case <-deadline:
			return fmt.Errorf("%w: epoch %d (newest event: epoch %d, leading %v)", ErrNotLeading, epoch, e, ok)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

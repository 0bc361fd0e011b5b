// Package elector is ccm-elector: it campaigns for the cluster's leader key,
// renews it with compare-and-set, fences itself when it cannot, and tells the
// node's other daemons the node's role through role events.
package elector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/convex-cluster-manager/ccm/shared/daemon"
	"github.com/convex-cluster-manager/ccm/shared/epochlog"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// Spec describes the ccm-elector binary to the daemon runtime.
func Spec() daemon.Spec {
	return daemon.Spec{
		Name:        schema.ServiceElector,
		Description: "ccm leader election with revision fencing",
		MetricsAddr: ":9470",
		New:         func(env daemon.Env) (daemon.Daemon, error) { return New(env) },
	}
}

// Elector runs the election for one node.
type Elector struct {
	cluster, node, version string
	ttl, heartbeat, lease  time.Duration
	replicas, maxLag       int
	maxLagBytes            int
	storageSync            time.Duration // how long a promotion waits for the storage mirror
	startTimeout           time.Duration // how long the backend may take to start serving
	resumeReady            bool          // the leader record found at start says this node served

	nc      *nats.Conn
	js      jetstream.JetStream
	log     *slog.Logger
	metrics *metrics
	started time.Time
	ready   chan struct{}
	cmds    chan command

	runCtx     context.Context    // Run's context, for promotions
	wg         sync.WaitGroup     // promotions in flight
	promotions chan promotionStep // promotion progress, to the loop

	mu       sync.Mutex
	state    State
	changed  chan struct{} // closed and replaced on every state change
	lastLoop time.Time
	renewed  time.Time // when the last successful renewal was sent
	// ineligible says why this node may not campaign now (nil: it may).
	ineligible error

	// Owned by the loop.
	kv      jetstream.KeyValue
	rev     uint64    // revision of our last write to the leader key
	since   time.Time // when this node took the key
	holdOff time.Time // no campaigning before this (after resigning)
	// servingBy is when a leader that holds the key without serving (its
	// promotion, or a demotion's drain) gives it up whatever step hangs.
	servingBy time.Time
	placedAt  time.Time   // stream leaders last checked (placement.go)
	placing   atomic.Bool // a check runs
	// current, per stream, is since when each peer has been seen current
	// (placement.go; only the running check touches it).
	current map[string]map[string]time.Time
	checked map[string]time.Time // per stream, when current was last updated
	dirty   bool                 // role changed since the node status was last written
	left    bool                 // ccm leave: no campaigning, no status until restarted
	gate    schema.EpochGate
	history *epochlog.Recorder // ccm history: this node's terms
	hooks   *hooks             // hooks.*: the operator's executables
	// settings holds the maintenance mode (pause.go); pause is its last
	// value read (under mu).
	settings jetstream.KeyValue
	pause    schema.PauseRecord
	memberAt time.Time // member record last written (loop-owned)
}

var _ daemon.Daemon = (*Elector)(nil)

// New returns an elector for the node configured in env.
func New(env daemon.Env) (*Elector, error) {
	js := env.JS
	c := env.Config
	e := &Elector{
		cluster:     c.ClusterID,
		node:        c.NodeID,
		version:     env.Version,
		ttl:         c.Election.LeaderTTL(),
		heartbeat:   c.Election.Heartbeat(),
		lease:       c.Election.LeaderTTL() - c.Election.SafetyMargin(),
		replicas:    c.NATS.Replicas,
		maxLag:      c.Election.MaxLagTXIDs,
		maxLagBytes: c.Election.MaxLagBytes,
		storageSync: c.Storage.SyncTimeout(),
		// ccm-backend's start endpoint gives up after the grace plus 10 s.
		startTimeout: c.Backend.StartGrace() + 15*time.Second,
		nc:           env.NC,
		js:           js,
		log:          env.Log,
		started:      time.Now(),
		ready:        make(chan struct{}),
		cmds:         make(chan command),
		promotions:   make(chan promotionStep),
		state:        State{Role: schema.RoleStarting},
		changed:      make(chan struct{}),
		lastLoop:     time.Now(),
		current:      map[string]map[string]time.Time{},
		checked:      map[string]time.Time{},
	}
	e.history = epochlog.NewRecorder(js, c.ClusterID, c.NodeID, c.NATS.Replicas, env.Log)
	e.hooks = newHooks(c.Hooks, c.ClusterID, c.NodeID, env.Log)
	e.metrics = newMetrics(env.Metrics, e)
	return e, nil
}

// State returns the current role state.
func (e *Elector) State() State {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.state
}

// Ready is closed once the elector has synchronised with the leader key.
func (e *Elector) Ready() <-chan struct{} { return e.ready }

// Healthy fails when the election loop has stalled.
func (e *Elector) Healthy() error {
	e.mu.Lock()
	last := e.lastLoop
	e.mu.Unlock()
	if limit := e.ttl + 2*e.heartbeat; time.Since(last) > limit {
		return fmt.Errorf("election loop stalled for %s", time.Since(last).Round(time.Millisecond))
	}
	return nil
}

// StatusLine summarises the role for systemctl status.
func (e *Elector) StatusLine() string {
	s := e.State()
	switch {
	case s.Role == schema.RoleLeader:
		return fmt.Sprintf("leader of epoch %d", s.Epoch)
	case s.Leader != "":
		return fmt.Sprintf("%s; leader %s (epoch %d)", s.Role, s.Leader, s.Epoch)
	default:
		return fmt.Sprintf("%s; no leader", s.Role)
	}
}

// Run campaigns, renews and watches until ctx is cancelled. It does not
// release the key on exit, so a restarted elector resumes its leadership.
func (e *Elector) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer func() { e.hooks.stop(string(e.State().Role)) }() // last, after the hooks queued
	defer e.wg.Wait()
	defer cancel()
	e.runCtx = ctx
	e.wg.Add(2)
	go func() {
		defer e.wg.Done()
		e.history.Run(ctx)
	}()
	go func() {
		defer e.wg.Done()
		e.hooks.run(ctx)
	}()
	kv, err := e.connect(ctx)
	if err != nil {
		return err
	}
	e.kv = kv
	events := make(chan schema.RoleEvent)
	sub, err := e.subscribeRoleEvents(ctx, events)
	if err != nil {
		return fmt.Errorf("subscribe to role events: %w", err)
	}
	defer sub.Unsubscribe()

	var w jetstream.KeyWatcher
	defer func() {
		if w != nil {
			w.Stop()
		}
	}()
	hb := time.NewTicker(e.heartbeat)
	defer hb.Stop()
	fence := time.NewTimer(time.Hour)
	defer fence.Stop()
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()

	for {
		if w == nil {
			if w, err = kv.Watch(ctx, schema.KeyLeader); err != nil {
				e.log.Warn("watch leader key", "err", err)
				w = nil
			}
		}
		var updates <-chan jetstream.KeyValueEntry
		if w != nil {
			updates = w.Updates()
		}
		if s := e.State(); s.Role == schema.RoleLeader {
			fence.Reset(time.Until(s.Deadline))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ent, ok := <-updates:
			if !ok {
				w = nil // re-created above
				continue
			}
			e.onEntry(ctx, ent)
		case ev := <-events:
			e.onRoleEvent(ev)
		case <-hb.C:
			e.tick(ctx, retry)
		case <-retry.C:
			e.tick(ctx, retry)
		case <-fence.C:
			e.apply(Event{Kind: Expired, At: time.Now()})
		case c := <-e.cmds:
			c.reply <- c.run(ctx)
		case p := <-e.promotions:
			e.onPromotion(ctx, p)
		}
		if w == nil && updates == nil {
			// No watcher yet: avoid a hot loop while NATS is away.
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(e.heartbeat / 4):
			}
		}
		e.apply(Event{Kind: Expired, At: time.Now()})
		e.enforceServing(ctx)
		if e.dirty {
			e.writeStatus(ctx)
		}
		e.mu.Lock()
		e.lastLoop = time.Now()
		e.mu.Unlock()
	}
}

// connect opens the bucket, retrying while NATS is unreachable.
func (e *Elector) connect(ctx context.Context) (jetstream.KeyValue, error) {
	var kv jetstream.KeyValue
	err := daemon.Retry(ctx, e.log, "NATS JetStream", func(ctx context.Context) error {
		var err error
		kv, err = openBucket(ctx, e.js, e.cluster, e.ttl, e.replicas)
		if errors.Is(err, ErrBucketMismatch) {
			return fmt.Errorf("%w: %w", daemon.ErrPermanent, err)
		}
		if err != nil {
			return err
		}
		e.settings, err = openSettings(ctx, e.js, e.cluster, e.replicas)
		return err
	})
	if err == nil {
		e.refreshPause(ctx) // before the first campaign
	}
	return kv, err
}

// onEntry reacts to a change of the leader key; nil marks the end of the
// initial values.
func (e *Elector) onEntry(ctx context.Context, ent jetstream.KeyValueEntry) {
	if ent == nil {
		e.sync(ctx)
		return
	}
	s := e.State()
	if s.Role == schema.RoleLeader && ent.Revision() <= e.rev {
		return // our own write, or an older one
	}
	if s.Role == schema.RoleStarting {
		return // handled by sync on the initial-values marker
	}
	if ent.Operation() != jetstream.KeyValuePut {
		e.apply(Event{Kind: Vacated, Reason: "leader key removed behind our back"})
		e.campaign(ctx)
		return
	}
	rec, err := decodeLeader(ent)
	if err != nil {
		e.log.Error("ignoring invalid leader record", "err", err)
		if s.Role == schema.RoleLeader {
			e.apply(Event{Kind: Lost, Reason: "leader key overwritten with an invalid record"})
		}
		return
	}
	epoch := rec.EpochAt(ent.Revision())
	if s.Role == schema.RoleLeader && rec.Node == e.node && rec.Serving() && epoch == s.Epoch {
		// Our own renewal whose reply we missed: only this node writes its epoch.
		e.rev = ent.Revision()
		return
	}
	if s.Role == schema.RoleLeader {
		e.apply(Event{Kind: Lost, Reason: fmt.Sprintf("leader key changed behind our back (revision %d, ours %d, node %q)", ent.Revision(), e.rev, rec.Node)})
	}
	switch {
	case rec.HandoverTo == e.node && !e.left:
		e.take(ctx, ent.Revision(), rec)
	case rec.HandoverTo != "":
		e.apply(Event{Kind: Vacated})
	default:
		e.gate.Admit(epoch)
		e.apply(Event{Kind: Observed, Node: rec.Node, Epoch: epoch})
	}
}

func leaderOf(r schema.LeaderRecord) string {
	if r.Serving() {
		return r.Node
	}
	return ""
}

func (e *Elector) markReady() {
	select {
	case <-e.ready:
	default:
		if e.State().Role != schema.RoleStarting {
			close(e.ready)
		}
	}
}

// tick renews the lease on a leader, and on every node re-checks the leader
// key (in case a watch update was missed) and writes the node's status.
func (e *Elector) tick(ctx context.Context, retry *time.Timer) {
	s := e.State()
	if s.Role != schema.RoleLeader {
		e.refreshPause(ctx) // a leader's heartbeat is its lease's: read it after renewing
	}
	switch s.Role {
	case schema.RoleStarting:
		e.sync(ctx)
	case schema.RoleLeader:
		if err := e.renewAt(ctx, s.Epoch, e.since); err != nil && !isConflict(err) {
			retry.Reset(e.heartbeat / 4)
			return // do not spend the lease on status writes
		}
		e.refreshPause(ctx)
		e.placeStreams(false)
	default:
		e.placeStreams(false)
		e.verify(ctx)
		// Repeated like a leader's renewal event, so that a daemon
		// restarted on a passive learns its role within a heartbeat.
		if s := e.State(); s.Role == schema.RolePassive {
			e.publish(s)
		}
	}
	e.writeStatus(ctx)
}

// setIneligible records why this node may not campaign (nil: it may).
func (e *Elector) setIneligible(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if (err == nil) != (e.ineligible == nil) || (err != nil && err.Error() != e.ineligible.Error()) {
		if err != nil {
			e.log.Warn("not campaigning", "reason", err)
		} else if e.ineligible != nil {
			e.log.Info("eligible to campaign again")
		}
	}
	e.ineligible = err
}

// writeStatus records this node's status under nodes.<node>.
func (e *Elector) writeStatus(ctx context.Context) {
	if e.left {
		return
	}
	s := e.State()
	timeout := e.heartbeat / 2
	if s.Role == schema.RoleLeader {
		timeout = min(timeout, time.Until(s.Deadline))
	}
	if timeout <= 0 {
		return
	}
	octx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st := schema.NodeStatus{
		Node: e.node, Role: s.Role, Epoch: s.Epoch, Leader: s.Leader,
		Version: e.version, StartedAt: e.started, UpdatedAt: time.Now(), Paused: e.paused(),
	}
	if _, err := e.kv.Put(octx, schema.NodeKey(e.node), encode(st)); err != nil {
		e.log.Debug("write node status", "err", err)
		return
	}
	e.dirty = false
	if e.settings != nil && time.Since(e.memberAt) > memberEvery {
		m := schema.MemberRecord{Node: e.node, LastSeen: time.Now(), Version: e.version}
		if _, err := e.settings.Put(octx, schema.MemberKey(e.node), encode(m)); err != nil {
			e.log.Debug("write member record", "err", err)
			return
		}
		e.memberAt = time.Now()
	}
}

// memberEvery is how often a running elector rewrites its member record
// (its last-seen time, for a node that went missing).
const memberEvery = 30 * time.Second

// enforceServing resigns a leader that has held the key without serving
// past the bound of what it was doing (its promotion, or a demotion's drain
// and undoing it), whatever step hangs: the others may then campaign.
func (e *Elector) enforceServing(ctx context.Context) {
	s := e.State()
	if s.Role != schema.RoleLeader || s.Ready || e.servingBy.IsZero() || time.Now().Before(e.servingBy) {
		return
	}
	if e.paused() {
		return // maintenance: the operator decides (its promotion may still finish)
	}
	e.log.Error("held the leader key without serving past its bound: giving up leadership", "epoch", s.Epoch, "bound", e.servingBy)
	if err := e.resign(ctx, "", "held the key without serving past its bound"); err != nil {
		e.log.Warn("resign", "err", err)
	}
}

// Package walapply is ccm-walapply: on a passive it follows the WAL stream
// and applies every verified change to the shadow database, records the
// applied position durably, and reports it with the lag.
package walapply

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"golang.org/x/sync/errgroup"

	"github.com/convex-cluster-manager/ccm/shared/config"
	"github.com/convex-cluster-manager/ccm/shared/daemon"
	"github.com/convex-cluster-manager/ccm/shared/natsconn"
	"github.com/convex-cluster-manager/ccm/shared/replica"
	"github.com/convex-cluster-manager/ccm/shared/rolewatch"
	"github.com/convex-cluster-manager/ccm/shared/schema"
	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

// Spec describes the ccm-walapply binary to the daemon runtime.
func Spec() daemon.Spec {
	return daemon.Spec{
		Name:        schema.ServiceWalapply,
		Description: "ccm WAL apply to the shadow database (passives)",
		MetricsAddr: ":9472",
		MemoryLimit: memoryLimit,
		New:         func(env daemon.Env) (daemon.Daemon, error) { return New(env) },
	}
}

// memoryLimit keeps the heap near what is live while a large transaction
// passes through (its garbage is a page-sized buffer per page): peak RSS
// stays within 64 MiB for a 1 GiB transaction.
const memoryLimit = 40 << 20

// errPaused ends a follow after a drain reached its target.
var errPaused = errors.New("paused")

// Daemon applies the WAL stream while its node is passive.
type Daemon struct {
	cfg     config.Config
	env     daemon.Env
	js      jetstream.JetStream
	stream  jetstream.Stream // the WAL stream, for lag measurements
	log     *slog.Logger
	ready   chan struct{}
	metrics *metrics
	wake    chan struct{}

	// applyMu is held while a message is applied (a large file takes
	// seconds): status, health and the control loop use mu and the
	// position cached under it, so they never wait for an apply.
	applyMu sync.Mutex

	mu             sync.Mutex
	shadow         *replica.Shadow       // set under applyMu and mu
	applier        *replica.Applier      // set under applyMu and mu
	pos            replica.Position      // the applier's position after its last message
	consumed       uint64                // the applier's last stream sequence handled
	failed         error                 // apply refused or the shadow is unusable: resync needed
	diverged       *replica.Verification // the verification that found the shadow diverged (failed is set)
	behind         error                 // the next message aged out of the stream: re-bootstrap
	retryBootstrap time.Time
	unopened       error // the shadow could not be opened yet, for a reason a retry may not meet
	retryOpen      time.Time
	paused         bool   // drained, for promotion; resumed by the resume endpoint
	drainTo        uint64 // pause once this stream sequence is consumed
	following      bool
	refollow       bool      // a drain saw the consumer stall: start a new one
	applying       bool      // a message is being handled
	handledAt      time.Time // when the last message was handled
	left           bool      // ccm leave: stopped, status key removed
	released       bool      // the shadow was handed to ccm-backend on promotion
	leading        bool      // the node led at the last look
	status         schema.ApplyStatus
	live           daemon.Loop
}

var _ daemon.Daemon = (*Daemon)(nil)

// New returns the walapply daemon for env.
func New(env daemon.Env) (*Daemon, error) {
	js := env.JS
	d := &Daemon{cfg: env.Config, env: env, js: js, log: env.Log, ready: make(chan struct{}),
		wake: make(chan struct{}, 1)}
	d.metrics = newMetrics(env.Metrics, d)
	d.live.Beat() // started: the loop's first round is due
	return d, nil
}

// Run opens the shadow database, then follows the stream while the node is
// passive, and publishes its status every second.
func (d *Daemon) Run(ctx context.Context) error {
	if err := daemon.Retry(ctx, d.log, "the WAL stream", func(ctx context.Context) error {
		// Short attempts: a stream being created can leave an info
		// request unanswered until it times out.
		lctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		s, err := walstream.Lookup(lctx, d.js, d.cfg.ClusterID)
		d.mu.Lock()
		d.stream = s
		d.mu.Unlock()
		return err
	}); err != nil {
		return err
	}
	d.openOrRetry(ctx, nil)
	defer d.close()
	roles, err := d.env.Roles()
	if err != nil {
		return err
	}
	defer roles.Close()
	close(d.ready)

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return d.publish(ctx) })
	g.Go(func() error { return d.control(ctx, roles) })
	g.Go(func() error {
		daemon.Every(ctx, d.cfg.WAL.VerifyInterval(), func(context.Context) {
			if _, err := d.Verify(); err != nil {
				d.log.Debug("shadow not verified", "err", err)
			}
		})
		return nil
	})
	return g.Wait()
}

// adopt makes the database this node led with its shadow, when that
// database is exactly what it shipped last: a demoted leader then
// continues from there instead of downloading a snapshot (open's
// bootstrap, which follows when adopt did not). It returns the shadow,
// open and verified, or nil.
func (d *Daemon) adopt(ctx context.Context) *replica.Shadow {
	if replica.Exists(d.cfg.ShadowPath()) {
		return nil
	}
	start := time.Now()
	sh, err := replica.Adopt(ctx, d.cfg.Backend.DBPath(), d.cfg.ShadowPath())
	if err != nil {
		d.log.Info("the database this node led with cannot become its shadow: bootstrapping from a snapshot", "reason", err)
		return nil
	}
	pos := sh.Position()
	d.log.Info("the database this node led with is its shadow again", "epoch", pos.Epoch, "txid", pos.TXID, "seq", pos.Seq,
		"took", time.Since(start).Round(time.Millisecond))
	return sh
}

// open opens the shadow database (sh, if adopt opened it); a node without
// one first bootstraps it from the newest snapshot, if there is one
// (otherwise it replays the stream from its start).
func (d *Daemon) open(ctx context.Context, sh *replica.Shadow) error {
	if path := d.cfg.ShadowPath(); sh == nil && !replica.Exists(path) {
		if d.streamEmpty(ctx) {
			// A new cluster: the shadow follows the stream from its start
			// (a snapshot bucket being created beside it can keep a listing
			// waiting, and the first promotion with it).
			d.log.Info("the WAL stream has never held a message: the shadow starts empty, no snapshot needed")
		} else if err := d.bootstrap(ctx, path); err != nil {
			return err
		}
	}
	if sh == nil {
		var err error
		if sh, err = replica.OpenShadow(d.cfg.ShadowPath()); err != nil {
			return err
		}
	}
	ap, err := replica.NewApplier(sh)
	if err != nil {
		sh.Close()
		return err
	}
	d.applyMu.Lock()
	d.mu.Lock()
	d.shadow, d.applier = sh, ap
	d.pos, d.consumed = ap.Position(), ap.Consumed()
	d.mu.Unlock()
	d.applyMu.Unlock()
	p := ap.Position()
	d.log.Info("shadow database open", "path", sh.Path(), "epoch", p.Epoch, "txid", p.TXID, "seq", p.Seq)
	return nil
}

// bootstrap installs the newest snapshot as the shadow at path, if there
// is one.
func (d *Daemon) bootstrap(ctx context.Context, path string) error {
	snap, err := replica.Bootstrap(ctx, d.js, d.cfg.ClusterID, path, nil)
	switch {
	case err == nil:
		d.log.Info("bootstrapped the shadow database from a snapshot", "snapshot", snap.Name, "epoch", snap.Epoch, "txid", snap.TXID, "seq", snap.Seq)
	case !errors.Is(err, replica.ErrNoSnapshot):
		return fmt.Errorf("bootstrap from a snapshot: %w", err)
	}
	return nil
}

// streamEmpty reports whether the WAL stream has never held a message.
func (d *Daemon) streamEmpty(ctx context.Context) bool {
	d.mu.Lock()
	s := d.stream
	d.mu.Unlock()
	if s == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	info, err := s.Info(ctx)
	return err == nil && info.State.LastSeq == 0
}

func (d *Daemon) close() {
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.applier != nil {
		d.applier.Close()
		d.shadow.Close()
		d.applier, d.shadow = nil, nil
	}
}

// openOrRetry opens the shadow (sh, or the one at the shadow path,
// bootstrapped if missing). Only a shadow or snapshot found unusable stops
// replication; anything else (NATS away or slow, a full disk) is retried
// by the control loop.
func (d *Daemon) openOrRetry(ctx context.Context, sh *replica.Shadow) {
	err := d.open(ctx, sh)
	if errors.Is(err, replica.ErrCorrupt) || errors.Is(err, replica.ErrChecksum) || errors.Is(err, replica.ErrDiverged) {
		d.fail(err)
		err = nil
	}
	const retry = 5 * time.Second
	d.mu.Lock()
	d.unopened, d.retryOpen = err, time.Now().Add(retry)
	d.mu.Unlock()
	if err != nil {
		d.log.Warn("shadow database not open yet: retrying", "err", err, "retry_in", retry)
	}
}

func (d *Daemon) fail(err error) {
	d.mu.Lock()
	d.failed = err
	d.mu.Unlock()
	d.metrics.failures.Inc()
	d.log.Error("replication stopped: resync from a snapshot is needed", "err", err)
}

// control runs the follower while the node is passive, not paused and not failed.
func (d *Daemon) control(ctx context.Context, roles *rolewatch.Tracker) error {
	var f *follower
	defer func() {
		if f != nil {
			f.stop()
		}
	}()
	for {
		_, _, leading := roles.Leading(time.Now())
		d.mu.Lock()
		demoted := d.leading && !leading
		d.leading = leading
		if demoted {
			// Passive again: apply again, from a fresh shadow if it was
			// handed over (the old tail stays with the backend's data).
			d.paused, d.drainTo = false, 0
		}
		reopen := demoted && d.released
		d.mu.Unlock()
		if reopen {
			d.openOrRetry(ctx, d.adopt(ctx))
			d.mu.Lock()
			d.released = false
			d.mu.Unlock()
		}
		d.mu.Lock()
		behind := d.behind != nil && !leading && !d.left && !d.released && time.Now().After(d.retryBootstrap)
		again := d.unopened != nil && !leading && !d.left && !d.released && time.Now().After(d.retryOpen)
		d.mu.Unlock()
		if again && f != nil && !f.ended() {
			again = false // the follower that found the apply interrupted is still ending
		}
		if again {
			d.close()
			d.openOrRetry(ctx, nil)
		}
		if behind {
			if f != nil {
				f.stop()
				f = nil
			}
			d.rebootstrap(ctx)
		}
		d.mu.Lock()
		// A leader-elect follows until its promotion's drain is done: the
		// drain's target may be beyond what arrived when it won (a lost
		// leader's last append), and nothing else brings it.
		want := roles.Settled(time.Now()) && (!leading || d.drainTo > 0) && !d.paused && !d.left && !d.released && d.failed == nil && d.behind == nil && d.unopened == nil && d.applier != nil
		d.live.Beat()
		d.mu.Unlock()
		if f != nil && f.ended() {
			f = nil
		}
		d.mu.Lock()
		refollow := d.refollow && f != nil
		d.refollow = false
		d.mu.Unlock()
		if refollow {
			f.stop()
			f = nil
		}
		switch {
		case want && f == nil:
			f = d.startFollower(ctx)
		case !want && f != nil:
			f.stop()
			f = nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-roles.Changed():
		case <-d.wake:
		case <-time.After(time.Second):
		}
	}
}

// follower is a running follow goroutine.
type follower struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func (d *Daemon) startFollower(ctx context.Context) *follower {
	fctx, cancel := context.WithCancel(ctx)
	f := &follower{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(f.done)
		d.follow(fctx)
	}()
	return f
}

func (f *follower) stop() {
	f.cancel()
	<-f.done
}

func (f *follower) ended() bool {
	select {
	case <-f.done:
		f.cancel()
		return true
	default:
		return false
	}
}

// follow consumes the stream from the applied position until ctx ends, a
// message is refused, or a drain completes.
func (d *Daemon) follow(ctx context.Context) {
	d.mu.Lock()
	from := d.consumed + 1
	d.following = true
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.following = false
		d.mu.Unlock()
		d.poke()
	}()
	err := replica.Follow(ctx, d.js, d.cfg.ClusterID, from, d.handle)
	switch {
	case err == nil, errors.Is(err, errPaused), ctx.Err() != nil:
	case errors.Is(err, replica.ErrGap) && d.agedOut(ctx):
		// refreshLag recorded it: the control loop re-bootstraps.
	case errors.Is(err, replica.ErrInterrupted):
		// A full disk or an I/O error while pages were written: the
		// control loop reopens the shadow, which finishes the apply from
		// its journal (retried while the disk refuses).
		d.log.Warn("an apply did not finish: reopening the shadow to finish it", "err", err)
		d.mu.Lock()
		d.unopened, d.retryOpen = err, time.Now().Add(time.Second)
		d.mu.Unlock()
	case errors.Is(err, replica.ErrCorrupt), errors.Is(err, replica.ErrGap), errors.Is(err, replica.ErrChecksum),
		errors.Is(err, replica.ErrStaleEpoch), errors.Is(err, replica.ErrDiverged):
		d.fail(err)
	default:
		// NATS trouble (e.g. a JetStream leader election after a partition):
		// back off before the control loop starts a new consumer.
		d.log.Warn("following the WAL stream; retrying in 1s", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// agedOut measures the lag afresh and reports whether the next message
// is no longer in the stream.
func (d *Daemon) agedOut(ctx context.Context) bool {
	d.refreshLag(ctx)
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.behind != nil
}

// rebootstrap replaces a shadow that fell behind the stream's retention
// with the newest snapshot. While that snapshot is older than the stream's
// start too, it asks a caught-up passive for a new one and tries again;
// meanwhile the node stays behind retention, and ineligible.
func (d *Daemon) rebootstrap(ctx context.Context) {
	d.close()
	snap, err := replica.Bootstrap(ctx, d.js, d.cfg.ClusterID, d.cfg.ShadowPath(), nil)
	if oerr := d.open(ctx, nil); err == nil {
		err = oerr
	}
	d.mu.Lock()
	d.behind = nil
	d.mu.Unlock()
	if err == nil && !d.agedOut(ctx) {
		d.log.Info("re-bootstrapped the shadow database from a snapshot", "snapshot", snap.Name, "epoch", snap.Epoch, "txid", snap.TXID, "seq", snap.Seq)
		return
	}
	if err == nil {
		err = fmt.Errorf("the newest snapshot (%s, sequence %d) is older than the stream's first message", snap.Name, snap.Seq)
	}
	d.mu.Lock()
	if d.behind == nil {
		d.behind = fmt.Errorf("re-bootstrap: %w", err)
	}
	d.mu.Unlock()
	// Ask a caught-up passive for a newer snapshot, and look again soon;
	// with nobody to ask, wait for a scheduled snapshot.
	retry := time.Minute
	peer := d.askSnapshot(ctx)
	if peer != "" {
		retry = 15 * time.Second
	}
	d.mu.Lock()
	d.retryBootstrap = time.Now().Add(retry)
	d.mu.Unlock()
	d.log.Warn("still behind the WAL stream's retention; re-bootstrapping again later", "err", err, "asked_snapshot_of", peer, "retry_in", retry)
}

// askSnapshot asks the ccm-snapshot of a caught-up passive to take a
// snapshot now, without waiting for it (the next re-bootstrap uses it),
// and returns the node asked ("" if none is caught up).
func (d *Daemon) askSnapshot(ctx context.Context) string {
	kv, err := d.js.KeyValue(ctx, schema.Bucket(d.cfg.ClusterID))
	if err != nil {
		return ""
	}
	lister, err := kv.ListKeysFiltered(ctx, schema.NodeKeys+".apply")
	if err != nil {
		return ""
	}
	for key := range lister.Keys() {
		ent, err := kv.Get(ctx, key)
		if err != nil {
			continue
		}
		var st schema.ApplyStatus
		if json.Unmarshal(ent.Value(), &st) != nil || st.Node == d.cfg.NodeID || st.State != schema.ApplyFollowing ||
			!st.Complete || st.LagTXIDs != 0 {
			continue
		}
		if d.env.NC.Publish(schema.Endpoint(d.cfg.ClusterID, st.Node, schema.ServiceSnapshot, schema.VerbNow), nil) == nil {
			lister.Stop()
			return st.Node
		}
	}
	return ""
}

func (d *Daemon) handle(m jetstream.Msg) error {
	md, err := m.Metadata()
	if err != nil {
		return fmt.Errorf("%w: message metadata: %w", replica.ErrCorrupt, err)
	}
	d.mu.Lock()
	d.applying = true
	d.mu.Unlock()
	d.applyMu.Lock()
	err = d.applier.Handle(md.Sequence.Stream, m.Headers(), m.Data())
	pos, consumed := d.applier.Position(), d.applier.Consumed()
	d.applyMu.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.pos, d.consumed = pos, consumed
	d.applying, d.handledAt = false, time.Now()
	if err != nil {
		return err
	}
	d.metrics.messages.Inc()
	if d.drainTo > 0 && consumed >= d.drainTo {
		d.paused, d.drainTo = true, 0
		return errPaused
	}
	return nil
}

func (d *Daemon) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// drainStall is how long a drain first waits for the next message before
// it follows again with a new consumer (doubled at each try).
const drainStall = time.Second

// Drain applies everything up to the stream's current end, then pauses
// applying (for a promotion) and returns the position reached.
func (d *Daemon) Drain(ctx context.Context) (replica.Position, error) {
	select { // the shadow is opened (or bootstrapped) at start
	case <-d.ready:
	case <-ctx.Done():
		return replica.Position{}, fmt.Errorf("drain: still starting: %w", ctx.Err())
	}
	s, err := d.js.Stream(ctx, walstream.Stream(d.cfg.ClusterID))
	if err != nil {
		return replica.Position{}, fmt.Errorf("WAL stream: %w", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return replica.Position{}, fmt.Errorf("WAL stream info: %w", err)
	}
	target := info.State.LastSeq
	d.mu.Lock()
	if d.released {
		// Already promoted (e.g. the elector restarted): nothing to drain.
		d.mu.Unlock()
		return replica.Position{}, nil
	}
	if d.failed != nil || d.behind != nil {
		err := errors.Join(d.failed, d.behind)
		d.mu.Unlock()
		return replica.Position{}, fmt.Errorf("cannot drain: replication stopped: %w", err)
	}
	if d.applier == nil {
		d.mu.Unlock()
		return replica.Position{}, errors.New("cannot drain: no shadow database")
	}
	if d.consumed >= target {
		d.paused = true
	} else {
		d.drainTo = target
	}
	consumed := d.consumed
	d.mu.Unlock()
	d.poke()
	// Logged: a promotion waits on this, and a drain that did not end
	// once said nothing of why (see the session notes of 2026-12-01).
	d.log.Info("drain: applying up to the stream's end", "target_seq", target, "consumed_seq", consumed)
	logged, asked, stall := time.Now(), time.Now(), drainStall
	for {
		d.mu.Lock()
		paused, following, failed := d.paused, d.following, d.failed
		pos, consumed := d.pos, d.consumed
		idle := !d.applying && time.Since(d.handledAt) > stall && time.Since(asked) > stall
		d.mu.Unlock()
		switch {
		case failed != nil:
			return replica.Position{}, fmt.Errorf("drain stopped: %w", failed)
		case paused && !following:
			return pos, nil
		case !paused && following && idle:
			// The consumer may sit on a server cut off from the stream
			// (a partition): it would notice only after missed
			// heartbeats and a recreation (30 s seen). A new one is
			// placed on a server that answers.
			d.log.Warn("drain: nothing arrived; following again with a new consumer", "target_seq", target, "consumed_seq", consumed, "after", stall)
			asked, stall = time.Now(), min(2*stall, 8*time.Second) // a consumer's creation may take a while too
			d.mu.Lock()
			d.refollow = true
			d.mu.Unlock()
			d.poke()
		case time.Since(logged) > time.Second:
			logged = time.Now()
			d.log.Info("drain: still applying", "target_seq", target, "consumed_seq", consumed, "paused", paused, "following", following)
		}
		select {
		case <-ctx.Done():
			d.log.Warn("drain: stream end not reached", "target_seq", target, "consumed_seq", consumed,
				"paused", paused, "following", following, "err", ctx.Err())
			return pos, fmt.Errorf("drain to sequence %d (consumed %d): %w", target, consumed, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Leave stops applying and publishing for good (until restarted) and
// removes this node's apply status key.
func (d *Daemon) Leave(ctx context.Context) error {
	d.mu.Lock()
	d.left = true
	d.mu.Unlock()
	d.poke()
	for {
		d.mu.Lock()
		following := d.following
		d.mu.Unlock()
		if !following {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	kv, err := d.js.KeyValue(ctx, schema.Bucket(d.cfg.ClusterID))
	if err != nil {
		return err
	}
	return kv.Delete(ctx, schema.ApplyKey(d.cfg.NodeID))
}

// Release hands the shadow database over (ccm-backend moves it into the
// data path on promotion): applying must be drained first; the shadow is
// closed and not touched again until the node is passive once more. A
// shadow that holds nothing yet (replica.Exists, the rule ccm-backend's
// install follows too) stays open and paused; one released already is
// released again (an elector restarted in the middle of a promotion).
func (d *Daemon) Release() (replica.Position, error) {
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.released {
		return replica.Position{}, nil
	}
	if d.applier == nil {
		return replica.Position{}, errors.New("no shadow database")
	}
	if !d.paused || d.following {
		return replica.Position{}, errors.New("drain before releasing the shadow database")
	}
	pos := d.applier.Position()
	if !replica.Exists(d.cfg.ShadowPath()) {
		return pos, nil
	}
	// Closed first: a file still being assembled (a drain target in the
	// middle of it) gives its predicted page sums back.
	d.applier.Close()
	// The page sums let the promoted node's walship continue the chain
	// from this database without reading it; without them it ships a
	// full copy, so a failure here only costs time.
	if err := d.shadow.WriteSums(); err != nil {
		d.log.Warn("page sums of the released shadow not written: the new epoch will ship a full copy", "err", err)
	}
	d.shadow.Close()
	d.applier, d.shadow, d.released = nil, nil, true
	d.log.Info("shadow database released for promotion", "epoch", pos.Epoch, "txid", pos.TXID)
	return pos, nil
}

// Resume lifts a drain's pause.
func (d *Daemon) Resume() {
	d.mu.Lock()
	d.paused, d.drainTo = false, 0
	d.mu.Unlock()
	d.poke()
}

// Ready is closed once the shadow is open (or found unusable) and role
// events are followed.
func (d *Daemon) Ready() <-chan struct{} { return d.ready }

// Healthy fails while replication is stopped by a refused message, or the
// control loop has stalled.
func (d *Daemon) Healthy() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.failed != nil {
		return d.failed
	}
	if err := d.live.Stalled("control", time.Minute); err != nil {
		return err
	}
	return nil
}

// StatusLine summarises the state for systemctl status.
func (d *Daemon) StatusLine() string {
	st := d.Status().(schema.ApplyStatus)
	if st.Error != "" {
		return "failed: " + st.Error
	}
	return fmt.Sprintf("%s; epoch %d TXID %d, lag %dms", st.State, st.Epoch, st.TXID, st.LagMs)
}

// AddEndpoints adds drain, resume, release, checkpoint, leave, verify and position.
func (d *Daemon) AddEndpoints(g micro.Group) error {
	if err := g.AddEndpoint(schema.VerbDrain, natsconn.Handle(60*time.Second, nil, func(ctx context.Context, _ micro.Request) (any, error) {
		return d.Drain(ctx)
	})); err != nil {
		return err
	}
	if err := g.AddEndpoint(schema.VerbResume, natsconn.Handle(0, nil, func(context.Context, micro.Request) (any, error) {
		d.Resume()
		return d.Status(), nil
	})); err != nil {
		return err
	}
	if err := g.AddEndpoint(schema.VerbRelease, natsconn.Handle(0, nil, func(context.Context, micro.Request) (any, error) {
		pos, err := d.Release()
		if err != nil {
			return nil, natsconn.WithCode(natsconn.CodeRefused, err)
		}
		return pos, nil
	})); err != nil {
		return err
	}
	if err := g.AddEndpoint(schema.VerbCheckpoint, natsconn.Handle(0, nil, func(context.Context, micro.Request) (any, error) {
		cp, err := d.Checkpoint()
		if err != nil {
			return nil, natsconn.WithCode(natsconn.CodeRefused, err)
		}
		return cp, nil
	})); err != nil {
		return err
	}
	if err := g.AddEndpoint(schema.VerbLeave, natsconn.Handle(10*time.Second, nil, func(ctx context.Context, _ micro.Request) (any, error) {
		if err := d.Leave(ctx); err != nil {
			return nil, err
		}
		return d.Status(), nil
	})); err != nil {
		return err
	}
	if err := g.AddEndpoint(schema.VerbVerify, natsconn.Handle(0, nil, func(context.Context, micro.Request) (any, error) {
		v, err := d.Verify()
		if err != nil {
			return nil, natsconn.WithCode(natsconn.CodeRefused, err)
		}
		return v, nil
	})); err != nil {
		return err
	}
	// position measures the lag afresh: the elector asks it before campaigning.
	return g.AddEndpoint(schema.VerbPosition, natsconn.Handle(0, nil, func(ctx context.Context, _ micro.Request) (any, error) {
		d.refreshLag(ctx)
		return d.Status(), nil
	}))
}

// Package walship is ccm-walship: while its node is the leader of epoch E
// (and only until the lease deadline of the newest role event) it captures
// the backend database's WAL with Litestream and appends it to the WAL
// stream, fenced so that a deposed leader cannot append.
package walship

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/convex-cluster-manager/ccm/shared/config"
	"github.com/convex-cluster-manager/ccm/shared/daemon"
	"github.com/convex-cluster-manager/ccm/shared/natsconn"
	"github.com/convex-cluster-manager/ccm/shared/rolewatch"
	"github.com/convex-cluster-manager/ccm/shared/schema"
	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

// Spec describes the ccm-walship binary to the daemon runtime.
func Spec() daemon.Spec {
	return daemon.Spec{
		Name:        schema.ServiceWalship,
		Description: "ccm WAL capture and shipping (leader)",
		MetricsAddr: ":9471",
		MemoryLimit: memoryLimit,
		New:         func(env daemon.Env) (daemon.Daemon, error) { return New(env) },
	}
}

// memoryLimit keeps the heap near what is live while a large transaction
// passes through (its garbage is a page-sized buffer per page): peak RSS
// stays within 64 MiB for a 1 GiB transaction.
const memoryLimit = 40 << 20

// Daemon ships the WAL while its node leads.
type Daemon struct {
	cfg   config.Config
	env   daemon.Env
	js    jetstream.JetStream
	log   *slog.Logger
	ready chan struct{}
	roles *rolewatch.Tracker
	// restart wakes the loop to replace a broken shipper (Shipper.Broken).
	restart chan struct{}
	// noStorageUntil (unix ns): no ccm-storage on this node was found,
	// and the barrier is skipped until then.
	noStorageUntil atomic.Int64
	// The storage barrier's state (storageBarrier): every file written
	// before barrierPassed is published; barrierDown: a barrier gave up
	// and none has passed since (probed at barrierProbed).
	barrierMu     sync.Mutex
	barrierPassed time.Time
	barrierProbed time.Time
	barrierDown   atomic.Bool

	verified *daemon.VerifyMetrics

	mu       sync.Mutex
	ship     *Shipper
	fencedAt uint64 // epoch whose appends were refused: never retried
	lastErr  error
	live     daemon.Loop
}

var _ daemon.Daemon = (*Daemon)(nil)

// New returns the walship daemon for env.
func New(env daemon.Env) (*Daemon, error) {
	js := env.JS
	d := &Daemon{cfg: env.Config, env: env, js: js, log: env.Log, ready: make(chan struct{}), restart: make(chan struct{}, 1), verified: daemon.NewVerifyMetrics(env.Metrics, "walship", "the leader's database")}
	if env.Metrics != nil {
		env.Metrics.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ccm_walship_shipped_txid", Help: "Highest TXID appended to the WAL stream in the current epoch.",
		}, func() float64 {
			if s := d.shipper(); s != nil {
				return float64(s.Shipped())
			}
			return 0
		}), prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ccm_walship_shipping", Help: "1 while this node ships its WAL.",
		}, func() float64 {
			if d.shipper() != nil {
				return 1
			}
			return 0
		}), prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ccm_walship_unshipped_seconds", Help: "How long the oldest TXID captured from the WAL but not yet in the stream has waited (0: none).",
		}, func() float64 {
			if s := d.shipper(); s != nil {
				_, waited := s.Unshipped()
				return waited.Seconds()
			}
			return 0
		}), prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "ccm_walship_bytes_total", Help: "LTX bytes appended in the current epoch.",
		}, func() float64 {
			if s := d.shipper(); s != nil {
				return float64(s.bytes.Load())
			}
			return 0
		}))
	}
	d.live.Beat() // started: the loop's first round is due
	return d, nil
}

func (d *Daemon) shipper() *Shipper {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ship
}

// Run follows the node's role and starts or stops shipping.
func (d *Daemon) Run(ctx context.Context) error {
	if err := daemon.Retry(ctx, d.log, "the WAL stream", func(ctx context.Context) error {
		_, err := walstream.Ensure(ctx, d.js, d.cfg.ClusterID, d.cfg.WAL.Retention(), d.cfg.NATS.Replicas)
		return err
	}); err != nil {
		return err
	}
	roles, err := d.env.Roles()
	if err != nil {
		return err
	}
	defer roles.Close()
	d.roles = roles
	close(d.ready)
	defer d.stop("stopping")

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return d.loop(ctx, roles, g) })
	g.Go(func() error {
		daemon.Every(ctx, d.cfg.WAL.VerifyInterval(), func(ctx context.Context) {
			if _, err := d.verify(ctx); err != nil && !errors.Is(err, errNotShipping) {
				d.log.Warn("database not verified", "err", err)
			}
		})
		return nil
	})
	return g.Wait()
}

// loop reconciles shipping with the role until ctx ends; resignations
// run on g.
func (d *Daemon) loop(ctx context.Context, roles *rolewatch.Tracker, g *errgroup.Group) error {
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	for {
		changed := roles.Changed()
		epoch, deadline, leading := roles.Prepared(time.Now())
		if fenced := d.reconcile(ctx, epoch, leading, retry); fenced != nil {
			g.Go(func() error { d.resign(ctx, epoch, fenced); return nil })
		}
		wait := 10 * time.Second // also proves the loop alive to Healthy
		if leading {
			wait = min(wait, time.Until(deadline)) // dead-man switch
		}
		d.mu.Lock()
		d.live.Beat()
		d.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-time.After(wait):
		case <-retry.C:
		case <-d.restart:
		}
	}
}

// resign asks this node's elector to step down: its leader's changes can
// no longer be shipped in epoch (cause), so every write it acknowledges
// from now on would be lost at the next leader change.
func (d *Daemon) resign(ctx context.Context, epoch uint64, cause error) {
	d.log.Error("cannot ship this epoch's changes: asking the elector to step down", "epoch", epoch, "err", cause)
	if _, err := natsconn.Call(ctx, d.env.NC, d.cfg.ClusterID, d.cfg.NodeID, schema.ServiceElector, schema.VerbDemote,
		schema.DemoteRequest{}, 3*time.Minute); err != nil {
		d.log.Error("stepping down failed: the lease ends by itself", "epoch", epoch, "err", err)
	}
}

// reconcile makes shipping match the role: ship epoch while leading,
// nothing otherwise. It returns the fencing error when the stream refused
// this node's appends for the epoch it still leads.
func (d *Daemon) reconcile(ctx context.Context, epoch uint64, leading bool, retry *time.Timer) (fenced error) {
	cur := d.shipper()
	if cur != nil && (!leading || cur.Epoch() != epoch || cur.Fenced() != nil || cur.Broken() != nil) {
		reason := "no longer leader"
		if err := cur.Broken(); err != nil {
			reason = err.Error() // and it opens again below, resuming
		}
		if err := cur.Fenced(); err != nil {
			reason = err.Error()
			d.mu.Lock()
			d.fencedAt, d.lastErr = cur.Epoch(), err
			d.mu.Unlock()
			if leading && cur.Epoch() == epoch {
				fenced = err
			}
		}
		d.stop(reason)
		cur = nil
	}
	if !leading || cur != nil {
		return fenced
	}
	d.mu.Lock()
	skip := d.fencedAt == epoch
	d.mu.Unlock()
	if skip {
		return fenced
	}
	s, err := Open(ctx, d.js, ShipperOptions{
		DBPath: d.cfg.Backend.DBPath(), Cluster: d.cfg.ClusterID, Node: d.cfg.NodeID, Epoch: epoch,
		Interval: d.cfg.WAL.CaptureInterval(), Log: d.log, Barrier: d.storageBarrier, Yield: d.yieldToLease,
		Broken: func(err error) {
			d.log.Error("shipping broke: restarting it", "epoch", epoch, "err", err)
			select {
			case d.restart <- struct{}{}:
			default:
			}
		},
	})
	d.mu.Lock()
	defer d.mu.Unlock()
	d.lastErr = err
	if err != nil {
		if errors.Is(err, walstream.ErrFenced) || errors.Is(err, ErrBehind) {
			d.fencedAt = epoch
			d.log.Error("not shipping: epoch refused", "epoch", epoch, "err", err)
			return err
		}
		d.log.Warn("cannot ship yet; retrying", "epoch", epoch, "err", err)
		retry.Reset(time.Second)
		return nil
	}
	d.ship = s
	return nil
}

// stop closes the current shipper, if any.
func (d *Daemon) stop(reason string) {
	d.mu.Lock()
	s := d.ship
	d.ship = nil
	d.mu.Unlock()
	if s == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		d.log.Warn("close shipper", "err", err)
	}
	d.log.Info("stopped shipping", "epoch", s.Epoch(), "shipped_txid", s.Shipped(), "reason", reason)
}

// Ready is closed once the stream exists and role events are followed.
func (d *Daemon) Ready() <-chan struct{} { return d.ready }

// Healthy fails when the control loop has stalled.
func (d *Daemon) Healthy() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.live.Stalled("control", time.Minute); err != nil {
		return err
	}
	return nil
}

// Status is what is being shipped.
type Status = schema.ShipStatus

// Status reports what is being shipped.
func (d *Daemon) Status() any {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := Status{RefusedEpoch: d.fencedAt}
	if d.lastErr != nil {
		st.Error = d.lastErr.Error()
	}
	if s := d.ship; s != nil {
		st = Status{Shipping: true, Epoch: s.Epoch(), TXID: uint64(s.Shipped()), Seq: s.client.app.LastSeq(),
			Files: s.files.Load(), Bytes: s.bytes.Load()}
		n, waited := s.Unshipped()
		st.UnshippedTXIDs, st.UnshippedMs = n, waited.Milliseconds()
		st.StorageBarrierDown = d.barrierDown.Load()
	}
	return st
}

// StatusLine summarises the state for systemctl status.
func (d *Daemon) StatusLine() string {
	if s := d.shipper(); s != nil {
		return fmt.Sprintf("shipping epoch %d, TXID %d", s.Epoch(), s.Shipped())
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.lastErr != nil {
		return "not shipping: " + d.lastErr.Error()
	}
	return "idle (not leader)"
}

// errNotShipping refuses what only the shipping leader does.
var errNotShipping = errors.New("not shipping: this node is not the leader")

// codes maps walship's errors to reply codes.
var codes = natsconn.Codes{errNotShipping: natsconn.CodeRefused, ErrBusy: natsconn.CodeRefused}

// AddEndpoints adds flush and verify.
func (d *Daemon) AddEndpoints(g micro.Group) error {
	if err := g.AddEndpoint(schema.VerbVerify, natsconn.Handle(10*time.Minute, codes, func(ctx context.Context, _ micro.Request) (any, error) {
		return d.verify(ctx)
	})); err != nil {
		return err
	}
	return g.AddEndpoint(schema.VerbFlush, natsconn.Handle(10*time.Second, codes, func(ctx context.Context, _ micro.Request) (any, error) {
		s := d.shipper()
		if s == nil {
			return nil, errNotShipping
		}
		txid, err := s.Flush(ctx)
		if err != nil {
			return nil, fmt.Errorf("flush: %w", err)
		}
		return schema.FlushReply{Epoch: s.Epoch(), TXID: uint64(txid), Seq: s.client.app.LastSeq()}, nil
	}))
}

// storageBarrierAttempt bounds one barrier request, beyond ccm-storage's
// own bound (4 s): a request that ccm-storage took and died with gets no
// answer, and large uploads take several attempts. storageBarrierProbe
// bounds the request that asks, once a barrier has given up, whether
// ccm-storage answers again (it holds shipping meanwhile).
const (
	storageBarrierAttempt = 5 * time.Second
	storageBarrierProbe   = 200 * time.Millisecond
)

// storageBarrier waits until ccm-storage has published every file written
// on this node before an LTX file captured at captured, retrying; without
// ccm-storage on the node (no status from it for a TTL) there is none. A
// barrier that passed covers every file captured before it was asked, so
// a backlog of files waits once, not once per file. It waits at most one
// lease TTL, then ships anyway, and goes on shipping without waiting
// (asking once a second, briefly, whether ccm-storage answers again):
// while the backend keeps acknowledging writes, holding them back longer
// would widen what a failover loses (rows and files) beyond what a
// cut-off leader loses today — one wait per file once shipped one file
// per TTL, and a leader cut off later lost hundreds of acknowledged writes.
func (d *Daemon) storageBarrier(ctx context.Context, captured time.Time) error {
	if time.Now().UnixNano() < d.noStorageUntil.Load() {
		return nil
	}
	d.barrierMu.Lock()
	defer d.barrierMu.Unlock()
	if captured.Add(time.Millisecond).Before(d.barrierPassed) {
		return nil // captured (to the millisecond) before that barrier was asked
	}
	if d.barrierDown.Load() {
		if time.Since(d.barrierProbed) < time.Second {
			return nil
		}
		d.barrierProbed = time.Now()
		asked, err := d.askBarrier(ctx, storageBarrierProbe)
		if err != nil {
			return nil
		}
		d.barrierDown.Store(false)
		d.barrierPassed = asked
		d.log.Info("ccm-storage's barrier answers again: shipping waits for it again")
		return nil
	}
	start, ttl := time.Now(), d.cfg.Election.LeaderTTL()
	for attempt := 1; ; attempt++ {
		waited := time.Since(start)
		if waited >= ttl {
			d.log.Error("shipping without ccm-storage's barrier until it answers again: the rows shipped may name storage files not yet published", "waited", waited.Round(time.Millisecond))
			d.barrierDown.Store(true)
			d.barrierProbed = time.Now()
			return nil
		}
		asked, err := d.askBarrier(ctx, max(min(storageBarrierAttempt, ttl-waited), storageBarrierProbe))
		if errors.Is(err, natsconn.ErrNotRunning) {
			// Not asked again for a second: two requests per file
			// for nothing. A ccm-storage started meanwhile publishes
			// the whole tree first.
			d.noStorageUntil.Store(time.Now().Add(time.Second).UnixNano())
			return nil
		}
		if err == nil {
			d.barrierPassed = asked
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		d.log.Warn("shipping waits for ccm-storage to publish the files written before it", "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// askBarrier makes one barrier request, bounded by within; it returns
// when it was asked (every file written before then is published once it
// succeeds).
func (d *Daemon) askBarrier(ctx context.Context, within time.Duration) (time.Time, error) {
	asked := time.Now()
	_, err := natsconn.Call(ctx, d.env.NC, d.cfg.ClusterID, d.cfg.NodeID, schema.ServiceStorage, schema.VerbBarrier, nil, within)
	return asked, natsconn.CheckAway(ctx, d.js, d.cfg.ClusterID, schema.StorageKey(d.cfg.NodeID), err)
}

// yieldToLease holds a large file's next chunk while this node's lease
// has less than half of it left (a renewal is late): the renewal goes
// through the same NATS servers and disks as the WAL stream, and a 1 GiB
// transaction shipped flat out on a three-server cluster kept a TTL-3s
// leader from renewing. It returns once the lease is renewed, or at once
// when the node does not lead (the append's fence decides then).
func (d *Daemon) yieldToLease(ctx context.Context) error {
	half := (d.cfg.Election.LeaderTTL() - d.cfg.Election.SafetyMargin()) / 2
	var held time.Time
	for {
		_, deadline, ok := d.roles.Leading(time.Now())
		if !ok || time.Until(deadline) > half {
			if !held.IsZero() {
				d.log.Info("shipping resumed after yielding to the lease renewal", "held", time.Since(held).Round(time.Millisecond))
			}
			return nil
		}
		if held.IsZero() {
			held = time.Now()
			d.log.Warn("shipping yields to the lease renewal: a large file's chunks wait", "lease_left", time.Until(deadline).Round(time.Millisecond))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-d.roles.Changed():
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Package backend is ccm-backend: it runs the Convex backend's systemd unit
// on the leader and nowhere else. On promotion it moves the drained shadow
// database into the data path and starts the unit, waiting for its health
// check; on demotion it stops it (the backend drains on SIGINT); when the
// lease deadline of the newest role event passes it kills it by itself;
// and a backend that keeps failing on the ready leader makes the elector
// hand over to another node.
package backend

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/convex-cluster-manager/ccm/shared/config"
	"github.com/convex-cluster-manager/ccm/shared/daemon"
	"github.com/convex-cluster-manager/ccm/shared/natsconn"
	"github.com/convex-cluster-manager/ccm/shared/replica"
	"github.com/convex-cluster-manager/ccm/shared/rolewatch"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// Spec describes the ccm-backend binary to the daemon runtime.
func Spec() daemon.Spec {
	return daemon.Spec{
		Name:        schema.ServiceBackend,
		Description: "ccm backend control",
		MetricsAddr: ":9475",
		New:         func(env daemon.Env) (daemon.Daemon, error) { return New(env) },
	}
}

// checkEvery is the interval of the reconcile loop and health checks.
const checkEvery = time.Second

// ErrNotLeader refuses starting the backend on a node that does not lead.
var ErrNotLeader = rolewatch.ErrNotLeading

// Daemon controls the backend unit of one node.
type Daemon struct {
	cfg    config.Config
	env    daemon.Env
	nc     *nats.Conn
	js     jetstream.JetStream
	log    *slog.Logger
	unit   systemctl
	http   *http.Client
	ready  chan struct{}
	roles  *rolewatch.Tracker
	health prometheus.Gauge
	// frozen and freezes: the backend frozen by the guard (freeze.go).
	frozen  prometheus.Gauge
	freezes prometheus.Counter

	opMu sync.Mutex     // one of prepare, start, stop, reconcile at a time
	wg   sync.WaitGroup // hand-over requests in flight, the abort handler

	mu        sync.Mutex
	state     string // unit ActiveState at the last look
	healthy   bool
	failures  int // consecutive failed health checks on the ready leader
	handedOff uint64
	led       bool      // the node led at the last reconcile
	held      bool      // stopped on request (a demotion): not restarted until Start
	frozenAt  time.Time // the guard froze the backend then (zero: not frozen)
	frozenWhy string
	lastErr   error
	live      daemon.Loop
}

var _ daemon.Daemon = (*Daemon)(nil)

// New returns the backend daemon for env.
func New(env daemon.Env) (*Daemon, error) {
	js := env.JS
	d := &Daemon{cfg: env.Config, env: env, nc: env.NC, js: js, log: env.Log, unit: newSystemctl(env.Config.Backend.ServiceName),
		http: &http.Client{Timeout: 2 * time.Second}, ready: make(chan struct{}),
		health: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ccm_backend_healthy", Help: "1 while the backend answers its health check here."}),
		frozen: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ccm_backend_frozen",
			Help: "1 while the backend is frozen because the leader's committed changes wait longer than wal.maxUnshippedMs to be shipped."}),
		freezes: prometheus.NewCounter(prometheus.CounterOpts{Name: "ccm_backend_freezes_total",
			Help: "Times the backend was frozen because committed changes were not shipped within wal.maxUnshippedMs."})}
	if env.Metrics != nil {
		env.Metrics.MustRegister(d.health, d.frozen, d.freezes)
	}
	d.live.Beat() // started: the loop's first round is due
	return d, nil
}

// Run follows the node's role and keeps the unit stopped unless the node leads.
func (d *Daemon) Run(ctx context.Context) error {
	roles, err := d.env.Roles()
	if err != nil {
		return err
	}
	defer roles.Close()
	defer d.wg.Wait()
	d.roles = roles
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	d.wg.Add(4)
	go func() {
		defer d.wg.Done()
		d.enforceOnAbort(ctx)
	}()
	go func() {
		defer d.wg.Done()
		d.deadman(ctx)
	}()
	go func() {
		defer d.wg.Done()
		d.guard(ctx)
	}()
	go func() {
		defer d.wg.Done()
		daemon.PublishStatus(ctx, d.js, d.cfg.ClusterID, schema.BackendKey(d.cfg.NodeID), d.log, func() (any, bool) { return d.Status(), true })
	}()
	close(d.ready)
	for {
		changed := roles.Changed()
		_, deadline, leading := roles.Leading(time.Now())
		d.reconcile(ctx)
		wait := checkEvery
		if leading {
			wait = min(wait, time.Until(deadline)) // dead-man switch
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-time.After(wait):
		}
	}
}

// reconcile stops a backend running on a node that does not lead (killing
// it if the lease deadline passed) and health-checks it on the ready leader.
func (d *Daemon) reconcile(ctx context.Context) {
	d.opMu.Lock()
	defer d.opMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	d.enforceLease(ctx)
	st, err := d.unit.state(ctx)
	// Again: the query may have outlasted the lease (a node frozen
	// meanwhile resumed, and the query failed: 1 s went by before the
	// next look).
	d.enforceLease(ctx)
	d.mu.Lock()
	d.live.Beat()
	d.state, d.lastErr = st, err
	d.mu.Unlock()
	if err != nil {
		d.log.Error("unit state", "err", err)
		return
	}
	if !d.roles.Settled(time.Now()) {
		return // just restarted: the elector's next event says whether this node leads
	}
	epoch, deadline, leading := d.roles.Leading(time.Now())
	_, serving := d.roles.Serving(time.Now())
	switch {
	case !leading && running(st):
		// Not the leader (any more): the deadline passed or the node was
		// demoted. Never leave the backend serving.
		d.log.Warn("backend running on a node that does not lead: killing it", "unit", d.unit.unit, "state", st)
		if err := d.unit.kill(ctx); err != nil {
			d.fail(err)
		}
		d.unfrozen()
		d.setHealth(false)
	case serving && d.isFrozen():
		// Frozen by the guard: it cannot answer, and that is not a failure.
	case serving && !d.isHeld():
		// A health check never outlives the lease: a hung backend must
		// not delay the dead-man switch past the deadline.
		pctx, cancel := context.WithDeadline(ctx, deadline)
		defer cancel()
		d.check(pctx, epoch)
	default:
		d.setHealth(false)
	}
}

// enforceLease kills the backend as soon as the node stops leading (the
// lease ended or the node was demoted), before asking systemd anything:
// after a frozen node resumed, asking for the unit's state first took
// 850 ms with a new leader serving (CI).
func (d *Daemon) enforceLease(ctx context.Context) {
	if !d.roles.Settled(time.Now()) {
		return
	}
	_, _, leading := d.roles.Leading(time.Now())
	d.mu.Lock()
	demoted := d.led && !leading
	d.led = leading
	d.mu.Unlock()
	if !demoted {
		return
	}
	// Its own bound: the reconcile's may have run out while frozen.
	kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortKillTimeout)
	defer cancel()
	if err := d.unit.kill(kctx); err != nil {
		d.log.Debug("kill on demotion", "err", err) // not running: the state query says
	}
	d.unfrozen()
	d.log.Warn("no longer the leader: backend killed; the data path's database is set aside, not merged; any change in it that did not reach the WAL stream stays there until the next promotion moves it under "+d.cfg.Backend.DataPath+"/.ccm-set-aside",
		"path", d.cfg.Backend.DBPath())
}

func (d *Daemon) isHeld() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.held
}

// check health-checks the backend on the ready leader and, after
// backend.maxFailures failures in a row, asks the elector to hand over.
func (d *Daemon) check(ctx context.Context, epoch uint64) {
	err := d.probe(ctx)
	if err != nil && ctx.Err() != nil {
		return // the lease ended (or the daemon stops): not the backend's failure
	}
	d.setHealth(err == nil)
	d.mu.Lock()
	if err == nil {
		d.failures = 0
		d.mu.Unlock()
		return
	}
	d.failures++
	n, handed := d.failures, d.handedOff == epoch
	d.mu.Unlock()
	d.log.Warn("backend health check failed", "failures", n, "err", err)
	if n < d.cfg.Backend.MaxFailures || handed {
		if n < d.cfg.Backend.MaxFailures {
			if err := d.startUnit(ctx); err != nil { // systemd's Restart= may have given up
				d.log.Warn("backend not restarted", "err", err)
			}
		}
		return
	}
	d.mu.Lock()
	d.handedOff = epoch
	d.mu.Unlock()
	d.log.Error("backend keeps failing on the leader: asking the elector to hand over", "failures", n)
	// Not inline: the demotion calls back into this daemon (stop), which
	// must not wait for the reconcile that is asking.
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if _, err := natsconn.Call(ctx, d.nc, d.cfg.ClusterID, d.cfg.NodeID, schema.ServiceElector, schema.VerbDemote, schema.DemoteRequest{Automatic: true}, 2*time.Minute); err != nil {
			d.log.Error("hand over", "err", err)
		}
	}()
}

// probe GETs the health endpoint.
func (d *Daemon) probe(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.cfg.Backend.HealthEndpoint, nil)
	if err != nil {
		return err
	}
	resp, err := d.http.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", d.cfg.Backend.HealthEndpoint, resp.Status)
	}
	return nil
}

func (d *Daemon) setHealth(ok bool) {
	d.mu.Lock()
	d.healthy = ok
	d.mu.Unlock()
	if ok {
		d.health.Set(1)
	} else {
		d.health.Set(0)
	}
}

func (d *Daemon) fail(err error) {
	d.mu.Lock()
	d.lastErr = err
	d.mu.Unlock()
	d.log.Error("backend control", "err", err)
}

// waitLeading waits briefly for the role event of epoch: a promotion step
// may arrive before the event that announced the promotion.
func (d *Daemon) waitLeading(ctx context.Context, epoch uint64) error {
	select { // role events are followed once running
	case <-d.ready:
	case <-ctx.Done():
		return fmt.Errorf("still starting: %w", ctx.Err())
	}
	return d.roles.WaitLeading(ctx, epoch, 3*time.Second)
}

// Prepare puts the database in place for epoch: with the unit stopped, the
// drained shadow is moved into the data path — once ccm-walapply has
// released it (the elector's step before this one); a shadow still held
// is refused. A node without a shadow keeps the database it has.
func (d *Daemon) Prepare(ctx context.Context, epoch uint64) error {
	if err := d.waitLeading(ctx, epoch); err != nil {
		return err
	}
	d.opMu.Lock()
	defer d.opMu.Unlock()
	if err := d.stopUnit(ctx); err != nil {
		return err
	}
	shadow := d.cfg.ShadowPath()
	if !replica.Exists(shadow) {
		created, err := ensureDatabase(d.cfg.Backend.DBPath())
		if err != nil {
			return err
		}
		if created {
			d.log.Info("no database yet: created an empty one so that shipping starts with the first write", "path", d.cfg.Backend.DBPath())
		} else {
			d.log.Info("no shadow database: keeping the data path's database", "path", d.cfg.Backend.DBPath())
		}
		return nil
	}
	aside, err := install(shadow, d.cfg.Backend.DBPath(), d.cfg.Backend.SetAsideDir(epoch, time.Now()))
	if err != nil {
		return err
	}
	d.log.Info("database installed for promotion", "epoch", epoch, "path", d.cfg.Backend.DBPath())
	if aside != "" {
		d.log.Warn("previous database set aside, not merged: it may hold changes that never reached the cluster", "dir", aside)
	}
	return nil
}

// startUnit starts the backend's unit, first creating an empty database
// if there is none and no shadow to install: a backend that creates it
// itself gives it SQLite's mode, 0644, and ccm-walship (another user, in
// the backend's group) could not write it. (A promotion whose Prepare
// found ccm-backend not yet running starts it this way.)
func (d *Daemon) startUnit(ctx context.Context) error {
	if _, err := os.Stat(d.cfg.Backend.DBPath()); errors.Is(err, fs.ErrNotExist) && !replica.Exists(d.cfg.ShadowPath()) {
		if _, err := ensureDatabase(d.cfg.Backend.DBPath()); err != nil {
			return err
		}
		d.log.Info("no database yet: created an empty one before starting the backend", "path", d.cfg.Backend.DBPath())
	}
	return d.unit.start(ctx)
}

// Start starts the unit for epoch and waits until the health check passes
// (up to backend.startGraceMs). It refuses unless the node leads epoch.
func (d *Daemon) Start(ctx context.Context, epoch uint64) error {
	if err := d.waitLeading(ctx, epoch); err != nil {
		return err
	}
	d.opMu.Lock()
	d.mu.Lock()
	d.held = false
	d.mu.Unlock()
	if err := d.startUnit(ctx); err != nil {
		d.opMu.Unlock()
		return err
	}
	d.opMu.Unlock()
	grace := d.cfg.Backend.StartGrace()
	deadline := time.Now().Add(grace)
	for {
		if _, _, ok := d.roles.Leading(time.Now()); !ok {
			return ErrNotLeader
		}
		err := d.probe(ctx)
		if err == nil {
			d.setHealth(true)
			d.mu.Lock()
			d.failures = 0
			d.mu.Unlock()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("backend not healthy after %s: %w", grace, err)
		}
		if st, _ := d.unit.state(ctx); st == "failed" {
			return fmt.Errorf("unit %s failed while starting: %w", d.unit.unit, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop stops the unit gracefully (the backend drains on SIGINT); the health
// checks do not start it again until Start.
func (d *Daemon) Stop(ctx context.Context) error {
	d.opMu.Lock()
	defer d.opMu.Unlock()
	d.mu.Lock()
	d.held = true // the health checks must not start it again
	d.mu.Unlock()
	d.setHealth(false)
	return d.stopUnit(ctx)
}

// stopUnit stops the backend gracefully, or kills it if it is frozen.
func (d *Daemon) stopUnit(ctx context.Context) error {
	err := d.unit.stop(ctx, d.isFrozen())
	if err == nil {
		d.unfrozen()
	}
	return err
}

// unfrozen records that the backend's processes are gone.
func (d *Daemon) unfrozen() {
	d.mu.Lock()
	d.frozenAt, d.frozenWhy = time.Time{}, ""
	d.mu.Unlock()
	d.frozen.Set(0)
}

// Ready is closed once role events are followed.
func (d *Daemon) Ready() <-chan struct{} { return d.ready }

// Healthy fails while systemctl fails or the loop stalls; a failing
// backend is reported in status, not by withholding this daemon's watchdog.
func (d *Daemon) Healthy() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.lastErr != nil {
		return d.lastErr
	}
	if err := d.live.Stalled("reconcile", time.Minute); err != nil {
		return err
	}
	return nil
}

// Status is the reply of the status endpoint.
type Status = schema.BackendStatus

// Status reports the unit, its health and whether it is frozen.
func (d *Daemon) Status() any {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := Status{Node: d.cfg.NodeID, Unit: d.unit.unit, State: d.state, Healthy: d.healthy, Failures: d.failures, UpdatedAt: time.Now()}
	if !d.frozenAt.IsZero() {
		st.Frozen, st.FrozenReason, st.FrozenMs = true, d.frozenWhy, time.Since(d.frozenAt).Milliseconds()
	}
	if d.lastErr != nil {
		st.Error = d.lastErr.Error()
	}
	return st
}

// StatusLine summarises the state for systemctl status.
func (d *Daemon) StatusLine() string {
	st := d.Status().(Status)
	if st.Frozen {
		return fmt.Sprintf("%s %s, FROZEN for %.1fs: %s", st.Unit, st.State, float64(st.FrozenMs)/1000, st.FrozenReason)
	}
	return fmt.Sprintf("%s %s, healthy %v", st.Unit, st.State, st.Healthy)
}

// AddEndpoints adds prepare, start and stop.
func (d *Daemon) AddEndpoints(g micro.Group) error {
	codes := natsconn.Codes{ErrNotLeader: natsconn.CodeRefused}
	op := func(fn func(context.Context, uint64) error, timeout time.Duration) micro.HandlerFunc {
		return natsconn.Handle(timeout, codes, func(ctx context.Context, req micro.Request) (any, error) {
			var r schema.EpochRequest
			if err := natsconn.Decode(req, &r); err != nil {
				return nil, err
			}
			if err := fn(ctx, r.Epoch); err != nil {
				return nil, err
			}
			return d.Status(), nil
		})
	}
	grace := d.cfg.Backend.StartGrace() + 10*time.Second
	for name, h := range map[string]micro.HandlerFunc{
		"prepare": op(d.Prepare, time.Minute),
		"start":   op(d.Start, grace),
		"stop":    op(func(ctx context.Context, _ uint64) error { return d.Stop(ctx) }, time.Minute),
	} {
		if err := g.AddEndpoint(name, h); err != nil {
			return err
		}
	}
	return nil
}

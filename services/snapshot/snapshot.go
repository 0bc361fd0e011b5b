// Package snapshot is ccm-snapshot: every wal.snapshotIntervalMs one caught-up
// passive of the cluster copies its shadow database (through its
// ccm-walapply, at an exact WAL position) into the cluster's Object Store,
// so that new nodes can join from it. With no caught-up passive, the leader's
// daemon builds the snapshot from the stream instead. A cluster-wide lock in
// the KV bucket keeps two snapshots from running at once.
package snapshot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
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
	"github.com/convex-cluster-manager/ccm/shared/snapstore"
)

// Spec describes the ccm-snapshot binary to the daemon runtime.
func Spec() daemon.Spec {
	return daemon.Spec{
		Name:        schema.ServiceSnapshot,
		Description: "ccm periodic database snapshots",
		MetricsAddr: ":9473",
		New:         func(env daemon.Env) (daemon.Daemon, error) { return New(env) },
	}
}

// Errors of the now endpoint.
var (
	ErrLeader = errors.New("this node is the leader and a caught-up passive will take the snapshot")
	ErrBusy   = errors.New("another node is taking a snapshot")
)

// Daemon takes snapshots on a passive node.
type Daemon struct {
	cfg   config.Config
	env   daemon.Env
	nc    *nats.Conn
	js    jetstream.JetStream
	log   *slog.Logger
	ready chan struct{}
	roles *rolewatch.Tracker
	store *snapstore.Store
	kv    jetstream.KeyValue

	takeMu sync.Mutex // one snapshot at a time on this node

	mu      sync.Mutex
	last    snapstore.Snapshot
	lastErr error
	live    daemon.Loop

	duration prometheus.Gauge
	failures prometheus.Counter
}

var _ daemon.Daemon = (*Daemon)(nil)

// New returns the snapshot daemon for env.
func New(env daemon.Env) (*Daemon, error) {
	js := env.JS
	d := &Daemon{cfg: env.Config, env: env, nc: env.NC, js: js, log: env.Log, ready: make(chan struct{}),
		duration: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ccm_snapshot_duration_seconds", Help: "Duration of the last snapshot taken here."}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "ccm_snapshot_failures_total", Help: "Snapshots attempted here that failed."}),
	}
	if env.Metrics != nil {
		env.Metrics.MustRegister(d.duration, d.failures,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ccm_snapshot_last_seq", Help: "WAL stream sequence of the last snapshot taken here."},
				func() float64 { d.mu.Lock(); defer d.mu.Unlock(); return float64(d.last.Seq) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ccm_snapshot_last_bytes", Help: "Size of the last snapshot taken here."},
				func() float64 { d.mu.Lock(); defer d.mu.Unlock(); return float64(d.last.Size) }))
	}
	d.live.Beat() // started: the loop's first round is due
	return d, nil
}

// Run opens the snapshot bucket and takes a snapshot whenever the newest one
// is older than the interval and this node is a caught-up passive.
func (d *Daemon) Run(ctx context.Context) error {
	if err := daemon.Retry(ctx, d.log, "the snapshot and cluster buckets", d.open); err != nil {
		return err
	}
	roles, err := d.env.Roles()
	if err != nil {
		return err
	}
	defer roles.Close()
	d.roles = roles
	close(d.ready)
	every := min(d.cfg.WAL.SnapshotInterval()/4, 30*time.Second)
	for {
		d.mu.Lock()
		d.live.Beat()
		d.mu.Unlock()
		if due, err := d.due(ctx, every); err != nil {
			d.log.Debug("check snapshot age", "err", err)
		} else if due {
			if s, err := d.Take(ctx, false); err == nil {
				d.log.Info("snapshot stored", "name", s.Name, "epoch", s.Epoch, "txid", s.TXID, "seq", s.Seq, "bytes", s.Size)
			} else if !errors.Is(err, ErrLeader) && !errors.Is(err, ErrBusy) {
				d.log.Warn("snapshot not taken", "err", err)
			}
		}
		jitter := time.Duration(rand.Int64N(int64(every/4) + 1))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(every + jitter):
		}
	}
}

func (d *Daemon) open(ctx context.Context) error {
	st, err := snapstore.Open(ctx, d.js, d.cfg.ClusterID, d.cfg.NATS.Replicas)
	if err != nil {
		return err
	}
	kv, err := d.js.KeyValue(ctx, schema.Bucket(d.cfg.ClusterID))
	if err != nil {
		return fmt.Errorf("cluster bucket (created by ccm-elector): %w", err)
	}
	d.store, d.kv = st, kv
	return nil
}

// due reports whether the newest snapshot is older than the interval; on
// the leader, older by two more checks, so that passives go first.
func (d *Daemon) due(ctx context.Context, every time.Duration) (bool, error) {
	s, err := d.store.Newest(ctx)
	if errors.Is(err, snapstore.ErrNone) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	limit := d.cfg.WAL.SnapshotInterval()
	if _, _, leading := d.roles.Leading(time.Now()); leading {
		limit += 2 * every
	}
	return time.Since(s.Created) >= limit, nil
}

// Take takes a snapshot now, holding the cluster's snapshot lock. A passive
// uploads a consistent copy of its shadow database from its ccm-walapply;
// the leader (or a node without a working walapply) builds one from the
// stream. The leader leaves it to a caught-up passive if there is one,
// unless force.
func (d *Daemon) Take(ctx context.Context, force bool) (snapstore.Snapshot, error) {
	d.takeMu.Lock()
	defer d.takeMu.Unlock()
	if _, _, leading := d.roles.Leading(time.Now()); leading && !force && d.passiveAvailable(ctx) {
		return snapstore.Snapshot{}, ErrLeader
	}
	start := time.Now()
	s, err := d.take(ctx)
	d.mu.Lock()
	d.lastErr = err
	if err == nil {
		d.last = s
	}
	d.mu.Unlock()
	if err != nil && !errors.Is(err, ErrBusy) {
		d.failures.Inc()
	}
	if err == nil {
		d.duration.Set(time.Since(start).Seconds())
	}
	return s, err
}

func (d *Daemon) take(ctx context.Context) (snapstore.Snapshot, error) {
	lock, _ := json.Marshal(map[string]any{"node": d.cfg.NodeID, "at": time.Now()})
	rev, err := d.kv.Create(ctx, schema.KeySnapshotLock, lock)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return snapstore.Snapshot{}, ErrBusy
	}
	if err != nil {
		return snapstore.Snapshot{}, fmt.Errorf("take snapshot lock: %w", err)
	}
	// Renew the lock (the bucket's TTL would expire it) while working.
	lctx, stopRenew := context.WithCancel(ctx)
	renewed := make(chan uint64, 1)
	go func() {
		t := time.NewTicker(d.cfg.Election.Heartbeat())
		defer t.Stop()
		r := rev
		defer func() { renewed <- r }()
		for {
			select {
			case <-lctx.Done():
				return
			case <-t.C:
				if nr, err := d.kv.Update(lctx, schema.KeySnapshotLock, lock, r); err == nil {
					r = nr
				}
			}
		}
	}()
	defer func() {
		stopRenew()
		r := <-renewed
		dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		d.kv.Delete(dctx, schema.KeySnapshotLock, jetstream.LastRevision(r))
	}()

	path, p, err := d.source(ctx)
	if err != nil {
		return snapstore.Snapshot{}, err
	}
	defer os.RemoveAll(path)
	return d.store.Put(ctx, path, snapstore.Snapshot{
		Epoch: p.Epoch, TXID: p.TXID, Seq: p.Seq, Checksum: p.Checksum, PageSize: p.PageSize,
		Node: d.cfg.NodeID, Captured: p.Captured, Bytes: p.Bytes, Chain: p.Chain,
	}, d.cfg.WAL.SnapshotKeep)
}

// source returns a database image at an exact position: a checkpoint of
// the local shadow on a following passive, otherwise one built from the
// stream (the file's directory is the caller's to remove, in that case).
func (d *Daemon) source(ctx context.Context) (string, replica.Position, error) {
	if _, _, leading := d.roles.Leading(time.Now()); !leading {
		cp, err := natsconn.CallJSON[replica.Checkpoint](ctx, d.nc, d.cfg.ClusterID, d.cfg.NodeID, schema.ServiceWalapply, schema.VerbCheckpoint, nil, time.Hour)
		if err == nil {
			return cp.Path, cp.Position, nil
		}
		d.log.Info("no checkpoint from ccm-walapply; building the snapshot from the stream", "err", err)
	}
	dir, err := os.MkdirTemp(filepath.Dir(filepath.Clean(d.cfg.WAL.ReplicaPath)), ".ccm-snapshot-")
	if err != nil {
		return "", replica.Position{}, fmt.Errorf("work directory: %w", err)
	}
	db, pos, err := d.materialize(ctx, dir)
	if err != nil {
		os.RemoveAll(dir)
		return "", replica.Position{}, err
	}
	// Move the image out of the work directory so that removing the
	// returned path removes both.
	img := dir + ".db"
	if err := os.Rename(db, img); err != nil {
		os.RemoveAll(dir)
		return "", replica.Position{}, err
	}
	os.RemoveAll(dir)
	return img, pos, nil
}

// Ready is closed once the buckets are open and role events are followed.
func (d *Daemon) Ready() <-chan struct{} { return d.ready }

// Healthy fails when the schedule loop has stalled; a snapshot upload
// may hold it for up to 30 minutes.
func (d *Daemon) Healthy() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.live.Stalled("schedule", d.cfg.WAL.SnapshotInterval()/2+30*time.Minute); err != nil {
		return err
	}
	return nil
}

// Status is the reply of the status endpoint.
type Status struct {
	Last  *snapstore.Snapshot `json:"last,omitempty"`
	Error string              `json:"error,omitempty"`
}

// Status reports the last snapshot taken here.
func (d *Daemon) Status() any {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := Status{}
	if d.last.Name != "" {
		l := d.last
		st.Last = &l
	}
	if d.lastErr != nil {
		st.Error = d.lastErr.Error()
	}
	return st
}

// StatusLine summarises the state for systemctl status.
func (d *Daemon) StatusLine() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.last.Name == "" {
		return "no snapshot taken here yet"
	}
	return fmt.Sprintf("last snapshot %s (%d bytes) at %s", d.last.Name, d.last.Size, d.last.Created.Format(time.RFC3339))
}

// AddEndpoints adds now.
func (d *Daemon) AddEndpoints(g micro.Group) error {
	codes := natsconn.Codes{ErrLeader: natsconn.CodeRefused, ErrBusy: natsconn.CodeRefused}
	return g.AddEndpoint(schema.VerbNow, natsconn.Handle(30*time.Minute, codes, func(ctx context.Context, _ micro.Request) (any, error) {
		return d.Take(ctx, true)
	}))
}

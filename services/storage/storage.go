// Package storage is ccm-storage: it replicates the backend's storage/
// directory beside its database. On the leader it captures the tree
// (inotify, with a periodic full reconcile as backstop) into the cluster's
// file store: contents addressed by SHA-256, a manifest entry per path. On
// passives it mirrors the manifest into the shadow storage directory, every
// file verified and renamed into place whole. A promotion waits, through
// the drain endpoint, until the mirror holds every file of the newest
// manifest, then moves it into the data path.
package storage

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/convex-cluster-manager/ccm/shared/config"
	"github.com/convex-cluster-manager/ccm/shared/daemon"
	"github.com/convex-cluster-manager/ccm/shared/filestore"
	"github.com/convex-cluster-manager/ccm/shared/rolewatch"
	"github.com/convex-cluster-manager/ccm/shared/schema"
	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

// Spec describes the ccm-storage binary to the daemon runtime.
func Spec() daemon.Spec {
	return daemon.Spec{
		Name:        schema.ServiceStorage,
		Description: "ccm storage directory replication",
		MetricsAddr: ":9476",
		New:         func(env daemon.Env) (daemon.Daemon, error) { return New(env) },
	}
}

// ErrNotLeader stops a capture whose node no longer leads its epoch.
var ErrNotLeader = errors.New("this node no longer leads the epoch it captures")

// mode is what the daemon does at a time.
type mode int

const (
	modeIdle    mode = iota
	modeMirror       // passive: mirror the manifest
	modeCapture      // prepared leader: publish the tree
)

// Daemon replicates one node's storage directory.
type Daemon struct {
	cfg      config.Config
	env      daemon.Env
	nc       *nats.Conn
	js       jetstream.JetStream
	log      *slog.Logger
	ready    chan struct{}
	roles    *rolewatch.Tracker
	store    *filestore.Store
	wal      jetstream.Stream // for the database position of captured files
	wake     chan struct{}
	flushes  chan chan error // to the running capture
	barriers chan chan error // to the running capture

	mu       sync.Mutex
	status   schema.StorageStatus
	mode     mode
	running  bool // the current mode's goroutine runs
	released bool // the mirror moved into the data path: wait for demotion
	remirror bool // a drain saw the manifest watch stall: mirror afresh
	left     bool // ccm leave: do nothing until restarted
	leading  bool
	live     daemon.Loop

	metrics metrics
}

var _ daemon.Daemon = (*Daemon)(nil)

// New returns the storage daemon for env.
func New(env daemon.Env) (*Daemon, error) {
	js := env.JS
	d := &Daemon{cfg: env.Config, env: env, nc: env.NC, js: js, log: env.Log, ready: make(chan struct{}), wake: make(chan struct{}, 1), flushes: make(chan chan error), barriers: make(chan chan error),
		status: schema.StorageStatus{State: schema.StorageIdle}, metrics: newMetrics()}
	if env.Metrics != nil {
		d.metrics.register(env.Metrics, d)
	}
	d.live.Beat() // started: the loop's first round is due
	return d, nil
}

// Run opens the file store and captures or mirrors as the node's role says.
func (d *Daemon) Run(ctx context.Context) error {
	if err := daemon.Retry(ctx, d.log, "the storage buckets", d.open); err != nil {
		return err
	}
	roles, err := d.env.Roles()
	if err != nil {
		return err
	}
	defer roles.Close()
	d.roles = roles
	close(d.ready)
	var g errgroup.Group
	defer g.Wait()
	g.Go(func() error { d.publish(ctx); return nil })
	var stop context.CancelFunc
	var done chan struct{}
	var cur mode
	defer func() {
		if stop != nil {
			stop()
			<-done
		}
	}()
	for {
		want, epoch := d.wanted(time.Now())
		d.mu.Lock()
		d.live.Beat()
		running, remirror := d.running, d.remirror
		d.remirror = false
		d.mu.Unlock()
		if stop != nil && (want != cur || !running || remirror) {
			stop()
			<-done
			stop = nil
		}
		if stop == nil && want != modeIdle {
			var mctx context.Context
			mctx, stop = context.WithCancel(ctx)
			done = make(chan struct{})
			cur = want
			d.mu.Lock()
			d.mode, d.running = want, true
			d.mu.Unlock()
			go func() {
				defer close(done)
				err := d.runMode(mctx, want, epoch)
				if err != nil && mctx.Err() == nil {
					d.log.Error("storage replication stopped; retrying", "err", err)
					d.setStatus(func(s *schema.StorageStatus) { s.State, s.Error = schema.StorageFailed, err.Error() })
					// A leader's shipping waits for its capture (the
					// barrier): retry that sooner than a mirror.
					wait := retryEvery
					if want == modeCapture {
						wait = time.Second
					}
					select {
					case <-mctx.Done():
					case <-time.After(wait):
					}
				}
				d.mu.Lock()
				d.running = false
				d.mu.Unlock()
				d.poke()
			}()
		}
		if stop == nil {
			d.mu.Lock()
			d.mode = modeIdle
			d.mu.Unlock()
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

// wanted is what the node should do now: capture while it leads a
// prepared epoch, mirror while it is passive or being promoted, nothing
// once its mirror moved into the data path or while it does not know its
// role yet.
func (d *Daemon) wanted(now time.Time) (mode, uint64) {
	if !d.roles.Settled(now) {
		return modeIdle, 0
	}
	epoch, _, prepared := d.roles.Prepared(now)
	_, _, leading := d.roles.Leading(now)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.leading && !leading {
		d.released = false // passive again: mirror afresh
	}
	d.leading = leading
	switch {
	case d.left:
		return modeIdle, 0
	case prepared:
		d.released = false // the installed tree is the data path's now
		return modeCapture, epoch
	case d.released:
		return modeIdle, 0
	default: // passive, or being promoted: the drain endpoint waits for the mirror
		return modeMirror, 0
	}
}

func (d *Daemon) runMode(ctx context.Context, m mode, epoch uint64) error {
	if m == modeCapture {
		d.log.Info("capturing the storage directory", "epoch", epoch, "dir", d.cfg.StorageDir())
		err := d.capture(ctx, epoch)
		if errors.Is(err, ErrNotLeader) {
			d.log.Info("storage capture stopped: the node no longer leads", "epoch", epoch)
			return nil // the control loop switches to what the role says now
		}
		return err
	}
	d.log.Info("mirroring the storage directory", "dir", d.cfg.ShadowStorageDir())
	return d.mirror(ctx)
}

func (d *Daemon) open(ctx context.Context) error {
	st, err := filestore.Open(ctx, d.js, d.cfg.ClusterID, d.cfg.NATS.Replicas)
	if err != nil {
		return err
	}
	d.store = st
	return nil
}

// poke wakes the control loop.
func (d *Daemon) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// fence fails unless the node still leads epoch with its database in
// place: a deposed leader stops publishing before its lease deadline.
func (d *Daemon) fence(epoch uint64) error {
	if e, _, ok := d.roles.Prepared(time.Now()); !ok || e != epoch {
		return ErrNotLeader
	}
	return nil
}

// dbSeq is the WAL stream's last sequence: the database position that
// files captured now belong with (0 if unknown).
func (d *Daemon) dbSeq(ctx context.Context) uint64 {
	if d.wal == nil {
		s, err := d.js.Stream(ctx, walstream.Stream(d.cfg.ClusterID))
		if err != nil {
			return 0
		}
		d.wal = s
	}
	info, err := d.wal.Info(ctx)
	if err != nil {
		return 0
	}
	return info.State.LastSeq
}

// Ready is closed once the file store is open and role events are followed.
func (d *Daemon) Ready() <-chan struct{} { return d.ready }

// Healthy fails when the control loop has stalled.
func (d *Daemon) Healthy() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.live.Stalled("control", 30*time.Second); err != nil {
		return err
	}
	return nil
}

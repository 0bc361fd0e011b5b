package walship

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/benbjohnson/litestream"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/superfly/ltx"
	"golang.org/x/sync/errgroup"

	"github.com/convex-cluster-manager/ccm/shared/replica"
	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

// keepL0 is how many shipped L0 files stay on disk; Litestream reads the
// newest to verify the WAL, older ones are only clutter.
const keepL0 = 8

// Shipper captures one database's WAL with Litestream and ships it for one
// epoch. It stops for good when its appends are fenced.
type Shipper struct {
	how     string // startFull, startContinue or startResume
	reason  string // why a full copy
	db      *litestream.DB
	replica *litestream.Replica
	client  *streamClient
	epoch   uint64

	base    uint64        // the TXID the epoch continued or resumed from (0: a full copy)
	shipped atomic.Uint64 // max TXID appended
	bytes   atomic.Int64
	files   atomic.Int64
	// captured is the max TXID Litestream captured from the WAL; marks
	// say when each unshipped TXID was captured (by ranges).
	captured atomic.Uint64
	marksMu  sync.Mutex
	marks    []captureMark

	stopCapture context.CancelFunc
	capturing   errgroup.Group
	watch       *commitWatch // closed after Litestream (see commitWatch)

	// syncMu serializes Litestream's syncs (capture, flushes) with the
	// check of its read lock after each (readlock.go).
	syncMu   sync.Mutex
	broken   atomic.Pointer[error]
	trusted  ltx.TXID // the last TXID captured with the read lock held, once broken
	onBroken func(error)
}

// ShipperOptions configure a Shipper.
type ShipperOptions struct {
	DBPath   string
	Cluster  string
	Node     string
	Epoch    uint64
	Interval time.Duration // Litestream monitor and replica sync interval
	Log      *slog.Logger
	// Barrier, if set, returns once every storage file written before
	// an LTX file captured at captured is published: no file is shipped
	// before it returns.
	Barrier func(ctx context.Context, captured time.Time) error
	// Yield, if set, holds a large file's chunks back while it waits
	// (walstream.Appender.SetYield).
	Yield func(context.Context) error
	// Broken, if set, is called once if the shipper stops for good
	// without being fenced (Shipper.Broken): it must be closed and opened
	// again.
	Broken func(error)
}

// Open opens epoch on the WAL stream (fenced) and starts capturing the
// database. It continues the chain when it can (see planStart): a new
// epoch whose database is the chain's head, or a restart within the epoch,
// ships only what is committed after it. Otherwise Litestream's local
// state is discarded and the first file shipped is a full copy, and the
// marker and the log say why.
func Open(ctx context.Context, js jetstream.JetStream, o ShipperOptions) (*Shipper, error) {
	if _, err := os.Stat(o.DBPath); err != nil {
		return nil, fmt.Errorf("database %s: %w", o.DBPath, err)
	}
	// Litestream writes to the database (its own tables, checkpoints):
	// say so plainly rather than "attempt to write a readonly database".
	if err := syscall.Access(o.DBPath, 2 /* W_OK */); err != nil {
		return nil, fmt.Errorf("database %s is not writable by this user (%w): it must be writable by the backend's group (created by ccm-backend with mode 0660; a database the backend created itself: chmod g+w, see the runbook)", o.DBPath, err)
	}
	db := litestream.NewDB(o.DBPath)
	db.MonitorInterval = 0 // capture (below) syncs only after commits
	// One final sync on close, no retry loop: a graceful demotion flushes
	// first, and a fenced shipper must not linger.
	db.ShutdownSyncTimeout = 0
	db.Logger = o.Log.With("component", "litestream")
	p, err := planStart(ctx, js, o.Cluster, o.Epoch, db)
	if err != nil {
		return nil, err
	}
	var app *walstream.Appender
	var conn *sql.DB
	switch p.how {
	case startResume:
		app, err = walstream.Continue(ctx, js, o.Cluster, o.Node, o.Epoch, p.base, p.tail)
	case startContinue:
		if err := os.RemoveAll(db.MetaPath()); err != nil {
			return nil, fmt.Errorf("reset litestream state %s: %w", db.MetaPath(), err)
		}
		if conn, err = seed(ctx, db, p.base.TXID, p.pages.Pages()); err != nil {
			return nil, fmt.Errorf("start Litestream at TXID %d: %w", p.base.TXID, err)
		}
		defer conn.Close() // after Litestream's first capture, below
		app, err = walstream.Continue(ctx, js, o.Cluster, o.Node, o.Epoch, p.base, p.tail)
	default:
		if err := os.RemoveAll(db.MetaPath()); err != nil {
			return nil, fmt.Errorf("reset litestream state %s: %w", db.MetaPath(), err)
		}
		p.base, p.pages = walstream.Base{}, replica.PageSums{}
		app, err = walstream.Open(ctx, js, o.Cluster, o.Node, o.Epoch, p.reason)
	}
	if err != nil {
		return nil, err
	}
	if o.Yield != nil {
		app.SetYield(o.Yield)
	}
	s := &Shipper{db: db, epoch: o.Epoch, how: p.how, reason: p.reason, base: uint64(p.base.TXID), onBroken: o.Broken,
		watch: &commitWatch{shm: o.DBPath + "-shm"}}
	s.client = newStreamClient(app, p.base.TXID, p.pages, replica.SumsPath(o.DBPath), s.wrote)
	s.client.log = o.Log
	s.client.barrier = o.Barrier
	if p.base.TXID != 0 {
		// From now on a restart resumes this epoch from the marker.
		s.client.record(walstream.Base{Epoch: o.Epoch, TXID: p.base.TXID, Checksum: p.base.Checksum, Seq: app.LastSeq(), End: app.End(), Chain: app.Chain()})
	}
	s.replica = litestream.NewReplicaWithClient(db, s.client)
	s.replica.SyncInterval = o.Interval
	db.Replica = s.replica
	if err := db.Open(); err != nil {
		s.client.close()
		return nil, fmt.Errorf("open litestream db %s: %w", o.DBPath, err)
	}
	// The first sync switches the database to WAL mode and captures it (whole,
	// on a full copy), before the backend writes to it.
	if err := s.sync(ctx); err != nil {
		s.close()
		return nil, fmt.Errorf("first capture of %s: %w", o.DBPath, err)
	}
	if err := s.replica.Start(context.WithoutCancel(ctx)); err != nil {
		s.close()
		return nil, fmt.Errorf("start replica: %w", err)
	}
	cctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	s.stopCapture = stop
	s.capturing.Go(func() error { s.capture(cctx, o.Interval, o.Log); return nil })
	if p.how == startFull {
		o.Log.Warn("shipping WAL: full copy of the database", "epoch", o.Epoch, "stream_seq", app.LastSeq(), "reason", p.reason)
	} else {
		o.Log.Info("shipping WAL: "+p.how+" the chain", "epoch", o.Epoch, "stream_seq", app.LastSeq(),
			"base_epoch", p.base.Epoch, "base_txid", p.base.TXID)
	}
	return s, nil
}

// close stops Litestream after a failed start.
func (s *Shipper) close() {
	s.db.Close(context.Background())
	s.watch.close()
	s.client.close()
	if err := s.dropUntrusted(); err != nil {
		s.client.log.Error("remove Litestream's files captured without its read lock", "err", err)
	}
}

// captureMark says that every TXID up to txid was captured by at.
type captureMark struct {
	txid uint64
	at   time.Time
}

// captureDone records the TXID Litestream captured up to, from the names
// of its L0 files (db.Pos would read and verify the newest file whole: a
// second pass over a large transaction).
func (s *Shipper) captureDone() {
	_, txid, err := s.db.MaxLTX()
	if err != nil || txid == 0 {
		return
	}
	s.noteCaptured(uint64(txid), time.Now())
}

// noteCaptured records that every TXID up to txid was captured by at.
func (s *Shipper) noteCaptured(txid uint64, at time.Time) {
	s.marksMu.Lock()
	defer s.marksMu.Unlock()
	s.captured.Store(txid)
	if n := len(s.marks); txid > s.chainHead() && (n == 0 || s.marks[n-1].txid < txid) {
		s.marks = append(s.marks, captureMark{txid: txid, at: at})
	}
}

// Unshipped reports the TXIDs captured from the WAL but not yet appended
// to the stream, and for how long the oldest of them has waited: the
// writes a failover now would lose.
func (s *Shipper) Unshipped() (txids uint64, waited time.Duration) {
	s.marksMu.Lock()
	defer s.marksMu.Unlock()
	shipped, captured := s.chainHead(), s.captured.Load()
	if captured <= shipped {
		return 0, 0
	}
	for _, m := range s.marks {
		if m.txid > shipped {
			return captured - shipped, time.Since(m.at)
		}
	}
	return captured - shipped, 0
}

// wrote records an append and prunes old local L0 files.
func (s *Shipper) wrote(txid ltx.TXID, n int64) {
	s.marksMu.Lock()
	s.shipped.Store(uint64(txid))
	i := 0
	for i < len(s.marks) && s.marks[i].txid <= uint64(txid) {
		i++
	}
	s.marks = s.marks[i:]
	s.marksMu.Unlock()
	s.bytes.Add(n)
	s.files.Add(1)
	if txid <= keepL0 {
		return
	}
	dir := s.db.LTXLevelDir(0)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		_, max, err := ltx.ParseFilename(e.Name())
		if err == nil && max < txid-keepL0 {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// Start says how the epoch started: "full copy" (with the reason),
// "continue" (a new epoch from the chain's head) or "resume" (a restart
// within the epoch).
func (s *Shipper) Start() (how, reason string) { return s.how, s.reason }

// Epoch is the epoch being shipped.
func (s *Shipper) Epoch() uint64 { return s.epoch }

// chainHead is the last TXID in the stream's chain from this shipper's
// view: the highest it appended, or the one it continued from.
func (s *Shipper) chainHead() uint64 { return max(s.shipped.Load(), s.base) }

// Shipped is the highest TXID appended to the stream.
func (s *Shipper) Shipped() ltx.TXID { return ltx.TXID(s.shipped.Load()) }

// Fenced returns the fencing error once the stream refused an append.
func (s *Shipper) Fenced() error { return s.client.Fenced() }

// Flush captures everything committed so far and returns once it is in
// the stream.
func (s *Shipper) Flush(ctx context.Context) (ltx.TXID, error) {
	if err := s.Fenced(); err != nil {
		return 0, err
	}
	if err := s.sync(ctx); err != nil {
		return 0, fmt.Errorf("capture WAL: %w", err)
	}
	if err := s.replica.Sync(ctx); err != nil {
		if f := s.Fenced(); f != nil {
			return 0, f
		}
		return 0, fmt.Errorf("ship WAL: %w", err)
	}
	return s.Shipped(), nil
}

// Close stops capturing. The database is left in WAL mode.
func (s *Shipper) Close(ctx context.Context) error {
	s.stopCapture()
	s.capturing.Wait()
	s.replica.Stop(true)
	err := s.db.Close(ctx)
	s.watch.close()
	s.client.close()
	if derr := s.dropUntrusted(); derr != nil {
		return fmt.Errorf("remove Litestream's files captured without its read lock (the next start must not resume from them): %w", derr)
	}
	if errors.Is(err, walstream.ErrFenced) || s.Fenced() != nil || s.Broken() != nil {
		return nil
	}
	return err
}

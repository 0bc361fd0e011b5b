package walship

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/benbjohnson/litestream"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/superfly/ltx"

	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

// keepL0 is how many shipped L0 files stay on disk; Litestream reads the
// newest to verify the WAL, older ones are only clutter.
const keepL0 = 8

// Shipper captures one database's WAL with Litestream and ships it for one
// epoch. It stops for good when its appends are fenced.
type Shipper struct {
	db      *litestream.DB
	replica *litestream.Replica
	client  *streamClient
	epoch   uint64

	shipped atomic.Uint64 // max TXID appended
	bytes   atomic.Int64
	files   atomic.Int64
}

// ShipperOptions configure a Shipper.
type ShipperOptions struct {
	DBPath   string
	Cluster  string
	Node     string
	Epoch    uint64
	Interval time.Duration // Litestream monitor and replica sync interval
	Log      *slog.Logger
}

// Open opens epoch on the WAL stream (fenced) and starts capturing the
// database. Litestream's local state is always discarded first, so the
// first file shipped is a full snapshot: it rebuilds the page checksums
// that chain every later file, and passives that already hold the same
// content recognise it by checksum and write nothing.
func Open(ctx context.Context, js jetstream.JetStream, o ShipperOptions) (*Shipper, error) {
	if _, err := os.Stat(o.DBPath); err != nil {
		return nil, fmt.Errorf("database %s: %w", o.DBPath, err)
	}
	app, err := walstream.Open(ctx, js, o.Cluster, o.Node, o.Epoch)
	if err != nil {
		return nil, err
	}
	db := litestream.NewDB(o.DBPath)
	db.MonitorInterval = o.Interval
	// One final sync on close, no retry loop: a graceful demotion flushes
	// first, and a fenced shipper must not linger.
	db.ShutdownSyncTimeout = 0
	db.Logger = o.Log.With("component", "litestream")
	if err := os.RemoveAll(db.MetaPath()); err != nil {
		return nil, fmt.Errorf("reset litestream state %s: %w", db.MetaPath(), err)
	}
	s := &Shipper{db: db, epoch: o.Epoch}
	s.client = newStreamClient(app, s.wrote)
	s.replica = litestream.NewReplicaWithClient(db, s.client)
	s.replica.SyncInterval = o.Interval
	db.Replica = s.replica
	if err := db.Open(); err != nil {
		return nil, fmt.Errorf("open litestream db %s: %w", o.DBPath, err)
	}
	// The first sync switches the database to WAL mode and captures it whole,
	// before the backend writes to it.
	if err := db.Sync(ctx); err != nil {
		db.Close(context.Background())
		return nil, fmt.Errorf("first capture of %s: %w", o.DBPath, err)
	}
	if err := s.replica.Start(context.WithoutCancel(ctx)); err != nil {
		db.Close(context.Background())
		return nil, fmt.Errorf("start replica: %w", err)
	}
	o.Log.Info("shipping WAL", "epoch", o.Epoch, "stream_seq", app.LastSeq())
	return s, nil
}

// wrote records an append and prunes old local L0 files.
func (s *Shipper) wrote(txid ltx.TXID, n int64) {
	s.shipped.Store(uint64(txid))
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

// Epoch is the epoch being shipped.
func (s *Shipper) Epoch() uint64 { return s.epoch }

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
	if err := s.db.Sync(ctx); err != nil {
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
	s.replica.Stop(true)
	err := s.db.Close(ctx)
	if errors.Is(err, walstream.ErrFenced) || s.Fenced() != nil {
		return nil
	}
	return err
}

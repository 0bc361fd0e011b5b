package walapply_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/services/walship"
	"github.com/convex-cluster-manager/ccm/shared/daemon/daemontest"
)

// onMessage is a slog handler that calls fn for every record with msg
// logged by a component, at any level.
type onMessage struct {
	slog.Handler
	msg string
	fn  func()
}

func (h onMessage) Enabled(context.Context, slog.Level) bool { return true }

func (h onMessage) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.fn()
	}
	if h.Handler.Enabled(ctx, r.Level) {
		return h.Handler.Handle(ctx, r)
	}
	return nil
}

func (h onMessage) WithAttrs(as []slog.Attr) slog.Handler {
	h.Handler = h.Handler.WithAttrs(as)
	return h
}

func (h onMessage) WithGroup(g string) slog.Handler {
	h.Handler = h.Handler.WithGroup(g)
	return h
}

// TestShipAfterFlushCanceledInCheckpointLosesNothing: a flush whose
// caller gives up (its request timed out) while Litestream checkpoints
// must not leave Litestream without its long-running read transaction,
// the lock that keeps the backend from checkpointing frames it has not
// captured. Without it, the backend's own checkpoint copies a commit into
// the database and its next write restarts the WAL over it: Litestream
// finds its last captured frame still in place, reads the new WAL from
// its start, and the commit is never shipped.
func TestShipAfterFlushCanceledInCheckpointLosesNothing(t *testing.T) {
	e := newEnv(t)
	var mu sync.Mutex
	var cancelFlush context.CancelFunc
	log := slog.New(onMessage{Handler: daemontest.Logger().Handler(), msg: "checkpoint", fn: func() {
		mu.Lock()
		defer mu.Unlock()
		if cancelFlush != nil {
			cancelFlush()
			cancelFlush = nil
		}
	}})
	// Captured by the flushes below only.
	first, err := walship.Open(context.Background(), e.js, walship.ShipperOptions{
		DBPath: e.dbPath, Cluster: cluster, Node: "leader", Epoch: 1, Interval: time.Hour, Log: log,
	})
	require.NoError(t, err)
	t.Cleanup(func() { first.Close(context.Background()) })
	s := first
	r := e.follow(t, "passive")

	// Past Litestream's checkpoint threshold (1000 pages), so that the
	// next flush checkpoints.
	w := openDB(t, writerDSN(e.dbPath))
	defer w.Close()
	mustExec(t, w, `CREATE TABLE other (id INTEGER PRIMARY KEY, body BLOB)`)
	mustExec(t, w, `INSERT INTO docs (body) VALUES ('first')`)
	growBy(t, e.dbPath, 5, 5)
	ctx, cancel := context.WithCancel(context.Background())
	mu.Lock()
	cancelFlush = cancel
	mu.Unlock()
	_, err = s.Flush(ctx)
	mu.Lock()
	checkpointed := cancelFlush == nil
	mu.Unlock()
	require.True(t, checkpointed, "the flush did not checkpoint (err %v)", err)
	t.Logf("flush canceled in Litestream's checkpoint: %v", err)
	require.Error(t, s.Broken(), "a shipper whose Litestream runs without its read lock must stop")

	// The backend: a small commit, its own checkpoint, then a larger
	// commit that restarts the WAL over the small one's frames.
	mustExec(t, w, `UPDATE docs SET body = 'committed after the canceled flush' WHERE id = 1`)
	mustExec(t, w, `PRAGMA wal_checkpoint(PASSIVE)`)
	mustExec(t, w, `INSERT INTO other (body) VALUES (?)`, make([]byte, 6*4096))

	// ccm-walship replaces a broken shipper: it resumes the epoch.
	require.NoError(t, s.Close(context.Background()))
	s = e.ship(t, 1)
	how, reason := s.Start()
	t.Logf("restart: %s %s", how, reason)
	assertAllShipped(t, e, s, r)
}

// TestBackendWriterProcess is the backend of
// TestShipWithABackendProcessLosesNothing, run in a process of its own
// (SQLite's locks between processes are POSIX locks, not those between
// connections of one process). Step "fill" grows the WAL; step "commit"
// makes a small commit, checkpoints the whole WAL and makes a larger
// commit, which restarts the WAL over the small one's frames if the
// checkpoint copied them (the WAL's far end, which Litestream captured
// last, stays in place).
func TestBackendWriterProcess(t *testing.T) {
	path := os.Getenv("CCM_TEST_BACKEND_DB")
	if path == "" {
		t.Skip("run by TestShipWithABackendProcessLosesNothing")
	}
	w := openDB(t, writerDSN(path))
	defer w.Close()
	switch step := os.Getenv("CCM_TEST_BACKEND_STEP"); step {
	case "fill":
		for range 100 {
			mustExec(t, w, `INSERT INTO other (body) VALUES (?)`, make([]byte, 4000))
		}
	case "commit":
		mustExec(t, w, `UPDATE docs SET body = ? WHERE id = 1`, "changed by the backend process")
		var busy, frames, done int
		require.NoError(t, w.QueryRow(`PRAGMA wal_checkpoint(PASSIVE)`).Scan(&busy, &frames, &done))
		fmt.Printf("the backend checkpointed %d of %d frames\n", done, frames)
		mustExec(t, w, `INSERT INTO other (body) VALUES (?)`, make([]byte, 6*4096))
	default:
		t.Fatalf("CCM_TEST_BACKEND_STEP %q", step)
	}
}

// TestShipWithABackendProcessLosesNothing: the backend is another
// process. Litestream's read transaction must keep it from checkpointing
// what was not captured yet; walship once dropped that lock without
// knowing, every capture tick, by closing the -shm file it had read
// (closing any descriptor of a file drops every POSIX lock the process
// holds on it): the backend's checkpoint and its next write restarted
// the WAL over a commit never captured.
func TestShipWithABackendProcessLosesNothing(t *testing.T) {
	e := newEnv(t)
	s := e.ship(t, 1)
	r := e.follow(t, "passive")
	w := openDB(t, writerDSN(e.dbPath))
	mustExec(t, w, `CREATE TABLE other (id INTEGER PRIMARY KEY, body BLOB)`)
	mustExec(t, w, `INSERT INTO docs (body) VALUES ('first')`)
	w.Close()
	backend := func(step string) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestBackendWriterProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), "CCM_TEST_BACKEND_DB="+e.dbPath, "CCM_TEST_BACKEND_STEP="+step)
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "backend process: %s", out)
		t.Logf("backend %s: %s", step, bytes.TrimSpace(out))
	}
	backend("fill")
	_, err := s.Flush(context.Background())
	require.NoError(t, err)
	time.Sleep(100 * time.Millisecond) // capture ticks
	backend("commit")
	assertAllShipped(t, e, s, r)
}

// assertAllShipped flushes s (epoch 1), waits until r applied it, and
// checks the leader's database against what it shipped and against r's
// shadow.
func assertAllShipped(t *testing.T, e *env, s *walship.Shipper, r *follower) {
	t.Helper()
	txid, err := s.Flush(context.Background())
	require.NoError(t, err)
	r.waitTXID(t, 1, uint64(txid))
	v, err := s.Verify(context.Background())
	require.NoError(t, err)
	require.Truef(t, v.Consistent(), "the leader's database against what it shipped: %s", v.Check)
	r.stop()
	assertSame(t, e.dbPath, r.shadow.Path())
}

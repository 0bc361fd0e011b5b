package storage

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/convex-cluster-manager/ccm/shared/filestore"
	"github.com/convex-cluster-manager/ccm/shared/fsutil"
	"github.com/convex-cluster-manager/ccm/shared/natsconn"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// drainStall is how long a drain first waits for the manifest watch to
// deliver the next revision before it mirrors afresh (doubled at each try).
const drainStall = time.Second

// Drain waits until the mirror holds every file of the newest manifest
// (at most storage.syncTimeoutMs), stops it and moves the mirrored tree
// into the data path for epoch; a tree already there is set aside, not
// merged. Called by ccm-elector while promoting this node.
func (d *Daemon) Drain(ctx context.Context, epoch uint64) (schema.StorageDrained, error) {
	select {
	case <-d.ready:
	case <-ctx.Done():
		return schema.StorageDrained{}, fmt.Errorf("drain: still starting: %w", ctx.Err())
	}
	if err := d.roles.WaitLeading(ctx, epoch, 3*time.Second); err != nil {
		return schema.StorageDrained{}, fmt.Errorf("%w: %w", ErrNotLeader, err)
	}
	d.mu.Lock()
	released, st := d.released || d.mode == modeCapture, d.status
	d.mu.Unlock()
	if released {
		return schema.StorageDrained{Files: st.Files, Bytes: st.Bytes, Revision: st.Revision}, nil // already installed
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Storage.SyncTimeout())
	defer cancel()
	target, err := d.lastRevision(ctx)
	if err != nil {
		return schema.StorageDrained{}, err
	}
	seen, moved, stall := uint64(0), time.Now(), drainStall
	for {
		d.mu.Lock()
		st = d.status // the reply's and the log's: the status that passed
		m, running := d.mode, d.running
		if m == modeMirror && running && st.State == schema.StorageSynced && st.Revision >= target {
			d.released = true // the control loop stops the mirror
			d.mu.Unlock()
			break
		}
		if st.Revision != seen || st.State != schema.StorageSynced {
			seen, moved = st.Revision, time.Now()
		} else if time.Since(moved) > stall {
			// In sync with a watch that delivers nothing: its consumer may
			// sit on a server cut off from the manifest's stream (a
			// partition), noticed only after missed heartbeats.
			d.log.Warn("storage drain: the manifest watch delivers nothing; mirroring afresh", "revision", st.Revision, "target", target, "after", stall)
			d.remirror = true
			moved, stall = time.Now(), min(2*stall, 8*time.Second)
		}
		remirror := d.remirror
		d.mu.Unlock()
		if remirror {
			d.poke()
		}
		select {
		case <-ctx.Done():
			return schema.StorageDrained{}, fmt.Errorf("storage mirror not in sync with manifest revision %d after %s (state %s, revision %d, %d/%d files, error %q): %w",
				target, d.cfg.Storage.SyncTimeout(), st.State, st.Revision, st.Files, st.ManifestFiles, st.Error, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err := d.waitStopped(ctx); err != nil {
		return schema.StorageDrained{}, fmt.Errorf("storage mirror did not stop: %w", err)
	}
	aside, err := installTree(d.cfg.ShadowStorageDir(), d.cfg.StorageDir(), filepath.Join(d.cfg.Backend.SetAsideDir(epoch, time.Now()), "storage"))
	if err != nil {
		d.mu.Lock()
		d.released = false // mirror again; the promotion fails
		d.mu.Unlock()
		d.poke()
		return schema.StorageDrained{}, fmt.Errorf("install the storage tree: %w", err)
	}
	d.log.Info("storage tree installed for promotion", "epoch", epoch, "files", st.Files, "bytes", st.Bytes, "revision", st.Revision, "path", d.cfg.StorageDir())
	if aside != "" {
		d.log.Warn("previous storage tree set aside, not merged: it may hold files that never reached the cluster", "dir", aside)
	}
	return schema.StorageDrained{Files: st.Files, Bytes: st.Bytes, Revision: st.Revision, SetAside: aside}, nil
}

// lastRevision asks for the manifest's last revision, each try bounded:
// right after a leader is lost JetStream may take seconds to answer
// again, and one request must not hold the promotion for the whole
// sync timeout.
func (d *Daemon) lastRevision(ctx context.Context) (uint64, error) {
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		rev, err := d.store.LastRevision(rctx)
		cancel()
		if err == nil {
			return rev, nil
		}
		d.log.Warn("storage drain: manifest revision", "err", err)
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("storage manifest revision: %w", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitStopped wakes the control loop and waits until the mode that ran
// has stopped.
func (d *Daemon) waitStopped(ctx context.Context) error {
	d.poke()
	for {
		d.mu.Lock()
		running := d.running
		d.mu.Unlock()
		if !running {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// installTree moves the directory shadow to dst, moving a tree already at
// dst to aside first (returned, "" if there was none). Across file
// systems it copies, with every file synced, before removing the source.
func installTree(shadow, dst, aside string) (string, error) {
	if err := os.MkdirAll(shadow, fsutil.DataDir); err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(dst), fsutil.DataDir); err != nil {
		return "", err
	}
	moved := ""
	if _, err := os.Stat(dst); err == nil {
		if err := os.MkdirAll(filepath.Dir(aside), fsutil.DataDir); err != nil {
			return "", err
		}
		if err := os.Rename(dst, aside); err != nil {
			return "", fmt.Errorf("set aside %s: %w", dst, err)
		}
		moved = aside
	}
	if err := os.Rename(shadow, dst); err != nil {
		if err := copyTree(shadow, dst+filestore.TempPrefix); err != nil {
			return moved, err
		}
		if err := os.Rename(dst+filestore.TempPrefix, dst); err != nil {
			return moved, err
		}
		if err := os.RemoveAll(shadow); err != nil {
			return moved, err
		}
	}
	return moved, fsutil.SyncDir(filepath.Dir(dst))
}

// copyTree copies the regular files and directories under src to dst,
// keeping modes and mtimes, each file synced.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(target, info.Mode().Perm()|0o700)
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		if err := fsutil.CopyFile(p, target, info.Mode().Perm()); err != nil {
			return err
		}
		return os.Chtimes(target, info.ModTime(), info.ModTime())
	})
}

// Leave stops capturing or mirroring for good (until restarted) and
// removes the node's storage status key: ccm leave.
func (d *Daemon) Leave(ctx context.Context) error {
	d.mu.Lock()
	d.left = true
	d.mu.Unlock()
	if err := d.waitStopped(ctx); err != nil {
		return err
	}
	kv, err := d.js.KeyValue(ctx, schema.Bucket(d.cfg.ClusterID))
	if err != nil {
		return err
	}
	return kv.Delete(ctx, schema.StorageKey(d.cfg.NodeID))
}

// BarrierTimeout bounds one barrier request: the caller asks again while
// large uploads are in flight.
const BarrierTimeout = 4 * time.Second

// AddEndpoints adds drain, flush, barrier and leave.
func (d *Daemon) AddEndpoints(g micro.Group) error {
	if err := g.AddEndpoint(schema.VerbLeave, natsconn.Handle(30*time.Second, nil, func(ctx context.Context, _ micro.Request) (any, error) {
		return nil, d.Leave(ctx)
	})); err != nil {
		return err
	}
	if err := g.AddEndpoint(schema.VerbBarrier, natsconn.Handle(BarrierTimeout, nil, func(ctx context.Context, _ micro.Request) (any, error) {
		return nil, d.Barrier(ctx)
	})); err != nil {
		return err
	}
	if err := g.AddEndpoint(schema.VerbFlush, natsconn.Handle(5*time.Minute, nil, func(ctx context.Context, _ micro.Request) (any, error) {
		if err := d.Flush(ctx); err != nil {
			return nil, err
		}
		st := d.Status().(schema.StorageStatus)
		return schema.StorageDrained{Files: st.Files, Bytes: st.Bytes}, nil
	})); err != nil {
		return err
	}
	codes := natsconn.Codes{ErrNotLeader: natsconn.CodeRefused, context.DeadlineExceeded: natsconn.CodeTimeout}
	return g.AddEndpoint(schema.VerbDrain, natsconn.Handle(d.cfg.Storage.SyncTimeout()+time.Minute, codes, func(ctx context.Context, req micro.Request) (any, error) {
		var r schema.EpochRequest
		if err := json.Unmarshal(req.Data(), &r); err != nil || r.Epoch == 0 {
			return nil, natsconn.WithCode(natsconn.CodeBadRequest, fmt.Errorf("drain wants {\"epoch\": N} with N > 0, got %q", req.Data()))
		}
		return d.Drain(ctx, r.Epoch)
	}))
}

package storage

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/convex-cluster-manager/ccm/shared/filestore"
	"github.com/convex-cluster-manager/ccm/shared/fsutil"
)

// settle is how long capture gathers events before acting on them, so
// that a burst of writes is published in one batch.
const settle = 50 * time.Millisecond

// parallel is how many files a batch captures (and a mirror fetches) at
// once: per-file round trips to NATS dominate small files.
const parallel = 8

// gcGrace keeps an unreferenced object this long: a mirror may still be
// fetching it for the entry it just replaced.
const gcGrace = 10 * time.Minute

// capturer publishes the leader's storage tree while this node leads epoch.
type capturer struct {
	mu    sync.Mutex // guards index while a batch runs in parallel
	d     *Daemon
	epoch uint64
	root  string
	index map[string]filestore.Entry // what the manifest says, by path
	// uploading holds the contents being uploaded by the batch's workers.
	uploading map[string]chan struct{}
	dirty     map[string]bool
	full      bool      // compare the whole tree at the next batch
	after     time.Time // no batch before this: a file still changing, or an error
	failed    error     // why the last batch left files unpublished (nil: it did not)
	// barriers waiting for their marker file's event, by its name.
	barriers map[string]chan error
	marks    int
}

// capture runs until ctx ends (the node stopped leading) or fails.
func (d *Daemon) capture(ctx context.Context, epoch uint64) error {
	root := d.cfg.StorageDir()
	if err := os.MkdirAll(root, fsutil.DataDir); err != nil {
		return fmt.Errorf("storage directory: %w", err)
	}
	entries, _, bad, err := d.store.Entries(ctx)
	if err != nil {
		return err
	}
	for _, e := range bad {
		d.log.Warn("replacing an invalid storage entry", "err", e)
	}
	n, err := newNotifier(root)
	if err != nil {
		return err
	}
	c := &capturer{d: d, epoch: epoch, root: root, index: entries, uploading: map[string]chan struct{}{}, dirty: map[string]bool{}, full: true,
		barriers: map[string]chan error{}}
	ev := &pending{paths: map[string]bool{}, wake: make(chan struct{}, 1)}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return n.read(ev.add) })
	g.Go(func() error {
		defer n.close()
		if err := n.watchTree(""); err != nil {
			return err
		}
		files, bytes := c.totals()
		d.setCapture(epoch, files, bytes)
		return c.loop(ctx, n, ev)
	})
	return g.Wait()
}

// pending gathers the notifier's events until the capture loop takes
// them: never blocking the reader, never dropping one (paths are a set).
type pending struct {
	mu        sync.Mutex
	paths     map[string]bool
	dirs      []string
	reconcile bool
	wake      chan struct{}
}

func (p *pending) add(ev event) {
	p.mu.Lock()
	switch {
	case ev.reconcile:
		p.reconcile = true
	case ev.dir:
		p.dirs = append(p.dirs, ev.path)
	default:
		p.paths[ev.path] = true
	}
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// take returns and clears what was gathered.
func (p *pending) take() (paths map[string]bool, dirs []string, reconcile bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	paths, dirs, reconcile = p.paths, p.dirs, p.reconcile
	p.paths, p.dirs, p.reconcile = map[string]bool{}, nil, false
	return paths, dirs, reconcile
}

func (c *capturer) loop(ctx context.Context, n *notifier, ev *pending) error {
	every := c.d.cfg.Storage.ReconcileInterval()
	full := time.NewTicker(every)
	defer full.Stop()
	var batch <-chan time.Time
	for {
		if (c.full || len(c.dirty) > 0) && batch == nil {
			batch = time.After(max(settle, time.Until(c.after)))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ev.wake:
			paths, dirs, reconcile := ev.take()
			var passed []chan error
			for p := range paths {
				if reply, ok := c.barriers[p]; ok {
					delete(c.barriers, p)
					os.Remove(filepath.Join(c.root, p))
					passed = append(passed, reply)
					continue
				}
				if strings.HasPrefix(filepath.Base(p), filestore.TempPrefix) {
					continue // never published: a download, or a barrier's marker going
				}
				c.dirty[p] = true
			}
			for _, dir := range dirs {
				if err := n.watchTree(dir); err != nil {
					return err
				}
				c.walk(dir)
			}
			if reconcile {
				c.full = true
				if err := n.watchTree(""); err != nil {
					return err
				}
			}
			if len(passed) > 0 {
				// Every event from before the barriers is in dirty now;
				// with nothing dirty, everything is published already.
				var err error
				if c.full || len(c.dirty) > 0 {
					err = c.flush(ctx)
				}
				if err == nil {
					err = c.failed
				}
				for _, reply := range passed {
					reply <- err
				}
				if err != nil && !errors.Is(err, c.failed) {
					return err
				}
			}
		case reply := <-c.d.barriers:
			c.marks++
			name := fmt.Sprintf("%sbarrier-%d", filestore.TempPrefix, c.marks)
			if err := os.WriteFile(filepath.Join(c.root, name), nil, fsutil.DataFile); err != nil {
				reply <- fmt.Errorf("storage barrier: %w", err)
				continue
			}
			c.barriers[name] = reply
		case reply := <-c.d.flushes:
			reply <- c.flushAll(ctx)
		case <-full.C:
			c.full = true
		case <-batch:
			batch = nil
			if err := c.flush(ctx); err != nil {
				return err
			}
		}
	}
}

// Flush publishes every change of the tree made so far and returns once
// the manifest has it: a graceful demotion's step before handing over. It
// waits for the capture to run: only a leader's elector asks, and a
// capture that stopped (a missed renewal, a restart) publishes the files
// written meanwhile when it starts again — answering "nothing to do" then
// handed over without them.
func (d *Daemon) Flush(ctx context.Context) error {
	return ask(ctx, d.flushes, "storage flush")
}

// Barrier returns once every file written on this node before it was
// called is published (in the manifest), or with why not: ccm-walship
// ships no database change before the files it may name. Files still
// being written do not hold it up. It waits for the capture to run.
func (d *Daemon) Barrier(ctx context.Context) error {
	return ask(ctx, d.barriers, "storage barrier")
}

// ask hands a request to the running capture on ch and waits for its
// answer; what names the request in errors.
func ask(ctx context.Context, ch chan chan error, what string) error {
	reply := make(chan error, 1)
	select {
	case ch <- reply:
	case <-ctx.Done():
		return fmt.Errorf("%s: the capture does not run: %w", what, ctx.Err())
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", what, ctx.Err())
	}
}

// walk marks every file below rel dirty.
func (c *capturer) walk(rel string) {
	filepath.WalkDir(filepath.Join(c.root, rel), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			r, _ := filepath.Rel(c.root, p)
			c.dirty[filepath.ToSlash(r)] = true
		}
		return nil
	})
}

// flush publishes what changed: every dirty path, or the whole tree.
func (c *capturer) flush(ctx context.Context) error {
	if c.full {
		c.full = false
		c.walk("")
		for p := range c.index {
			c.dirty[p] = true // deleted ones included
		}
		defer c.gc(ctx)
	}
	if err := c.d.fence(c.epoch); err != nil {
		return err
	}
	dbSeq := c.d.dbSeq(ctx)
	var (
		mu      sync.Mutex
		changed int
		again   []string // still being written
		failed  error
	)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(parallel)
	for p := range c.dirty {
		delete(c.dirty, p)
		if strings.HasPrefix(filepath.Base(p), filestore.TempPrefix) {
			continue
		}
		g.Go(func() error {
			ok, err := c.sync(gctx, p, dbSeq)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, filestore.ErrChanged):
				again = append(again, p)
			case errors.Is(err, ErrNotLeader):
				return err
			case err != nil:
				again = append(again, p)
				if failed == nil {
					failed = err
				}
			case ok:
				changed++
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for _, p := range again {
		c.dirty[p] = true
	}
	c.failed = failed
	switch {
	case failed != nil:
		c.after = time.Now().Add(time.Second)
	case len(again) > 0:
		c.after = time.Now().Add(500 * time.Millisecond) // look again a little later
	}
	c.d.captureFailed(failed)
	if changed == 0 {
		return nil
	}
	return c.publishManifest(ctx, dbSeq)
}

// flushRetry is how long a flush asked for retries the files that failed
// (a stream without a leader for a moment) before it reports them.
const flushRetry = 10 * time.Second

// flushAll publishes the whole tree for Flush: it succeeds only when every
// file is published. (It answered success with files that had failed to
// upload, and a demotion handed over without them.)
func (c *capturer) flushAll(ctx context.Context) error {
	c.full = true
	err := c.flush(ctx)
	for end := time.Now().Add(flushRetry); err == nil && c.failed != nil && time.Now().Before(end); {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
		err = c.flush(ctx)
	}
	if err == nil && c.failed != nil {
		err = fmt.Errorf("storage flush: files not published: %w", c.failed)
	}
	return err
}

// ensureObject uploads the contents sum of the file at abs unless they are
// stored; it returns the bytes uploaded. Two files of a batch with the same
// contents upload them once: the second waits for the first.
func (c *capturer) ensureObject(ctx context.Context, abs, sum string, size int64) (int64, error) {
	c.mu.Lock()
	for {
		busy, ok := c.uploading[sum]
		if !ok {
			break
		}
		c.mu.Unlock()
		select {
		case <-busy:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		c.mu.Lock()
	}
	done := make(chan struct{})
	c.uploading[sum] = done
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.uploading, sum)
		c.mu.Unlock()
		close(done)
	}()
	has, err := c.d.store.HasObject(ctx, sum)
	if err != nil || has {
		return 0, err
	}
	if err := c.d.store.Upload(ctx, abs, sum); err != nil {
		return 0, err
	}
	return size, nil
}

// lookup returns the manifest's entry of p.
func (c *capturer) lookup(p string) (filestore.Entry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.index[p]
	return e, ok
}

// record sets (or, with nil, removes) the manifest's entry of p.
func (c *capturer) record(p string, e *filestore.Entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e == nil {
		delete(c.index, p)
		return
	}
	c.index[p] = *e
}

// sync publishes the state of one path; it reports whether the manifest changed.
func (c *capturer) sync(ctx context.Context, p string, dbSeq uint64) (bool, error) {
	if err := filestore.CheckPath(p); err != nil {
		c.d.log.Warn("not replicating a file with an unsafe name", "err", err)
		return false, nil
	}
	abs := filepath.Join(c.root, filepath.FromSlash(p))
	old, had := c.lookup(p)
	st, err := os.Lstat(abs)
	if err != nil || !st.Mode().IsRegular() {
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return false, err
		}
		if !had {
			return false, nil
		}
		if err := c.d.fence(c.epoch); err != nil {
			return false, err
		}
		if err := c.d.store.Delete(ctx, p); err != nil {
			return false, err
		}
		c.record(p, nil)
		c.d.captured(0)
		return true, nil
	}
	if had && old.Size == st.Size() && old.MtimeNs == st.ModTime().UnixNano() && old.Mode == uint32(st.Mode().Perm()) {
		return false, nil
	}
	sum, size, err := filestore.HashFile(abs)
	if errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("%s: %w", p, filestore.ErrChanged) // gone meanwhile: look again
	}
	if err != nil {
		return false, err
	}
	after, err := os.Lstat(abs)
	if err != nil || after.Size() != size || !after.ModTime().Equal(st.ModTime()) {
		return false, fmt.Errorf("%s: %w", p, filestore.ErrChanged)
	}
	e := filestore.Entry{Path: p, Size: size, SHA256: sum, Mode: uint32(st.Mode().Perm()), MtimeNs: st.ModTime().UnixNano(),
		Epoch: c.epoch, DBSeq: dbSeq, Node: c.d.cfg.NodeID, At: time.Now().UTC()}
	if had && old.SHA256 == e.SHA256 && old.Size == e.Size && old.Mode == e.Mode && old.MtimeNs == e.MtimeNs {
		return false, nil
	}
	uploaded, err := c.ensureObject(ctx, abs, sum, size)
	if err != nil {
		return false, err
	}
	if err := c.d.fence(c.epoch); err != nil {
		return false, err
	}
	if err := c.d.store.Put(ctx, e); err != nil {
		return false, err
	}
	c.record(p, &e)
	c.d.captured(uploaded)
	return true, nil
}

func (c *capturer) publishManifest(ctx context.Context, dbSeq uint64) error {
	m := filestore.Manifest{Epoch: c.epoch, Node: c.d.cfg.NodeID, DBSeq: dbSeq, Updated: time.Now().UTC()}
	m.Files, m.Bytes = c.totals()
	if err := c.d.fence(c.epoch); err != nil {
		return err
	}
	if err := c.d.store.PutManifest(ctx, m); err != nil {
		return err
	}
	c.d.setCapture(c.epoch, m.Files, m.Bytes)
	return nil
}

// totals counts the files and bytes of the manifest.
func (c *capturer) totals() (files int, bytes int64) {
	for _, e := range c.index {
		files++
		bytes += e.Size
	}
	return files, bytes
}

// gc removes objects no entry refers to any more, once they are old
// enough that no mirror can still be fetching them.
func (c *capturer) gc(ctx context.Context) {
	objs, err := c.d.store.Objects(ctx)
	if err != nil {
		c.d.log.Warn("storage garbage collection", "err", err)
		return
	}
	used := make(map[string]bool, len(c.index))
	for _, e := range c.index {
		used[e.SHA256] = true
	}
	removed := 0
	for _, o := range objs {
		if used[o.Name] || time.Since(o.ModTime) < gcGrace {
			continue
		}
		if err := c.d.store.DeleteObject(ctx, o.Name); err != nil {
			c.d.log.Warn("storage garbage collection", "err", err)
			return
		}
		removed++
	}
	if removed > 0 {
		c.d.log.Info("removed unreferenced storage objects", "objects", removed)
	}
}

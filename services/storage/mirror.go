package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/convex-cluster-manager/ccm/shared/filestore"
	"github.com/convex-cluster-manager/ccm/shared/fsutil"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// retryEvery is how often a mirror retries files it could not fetch.
const retryEvery = 5 * time.Second

// mirrorer keeps the shadow storage tree equal to the manifest.
type mirrorer struct {
	d      *Daemon
	root   string // shadow tree
	seed   string // the data path's tree: a local source of identical files
	want   map[string]filestore.Entry
	failed map[string]error
	bytes  int64 // sum of want's sizes
}

// set records the entry wanted at p (nil: none).
func (m *mirrorer) set(p string, e *filestore.Entry) {
	m.bytes -= m.want[p].Size
	delete(m.want, p)
	if e != nil {
		m.want[p] = *e
		m.bytes += e.Size
	}
}

// mirror runs until ctx ends.
func (d *Daemon) mirror(ctx context.Context) error {
	m := &mirrorer{d: d, root: d.cfg.ShadowStorageDir(), seed: d.cfg.StorageDir(),
		want: map[string]filestore.Entry{}, failed: map[string]error{}}
	if err := os.MkdirAll(m.root, fsutil.DataDir); err != nil {
		return fmt.Errorf("shadow storage directory: %w", err)
	}
	w, err := d.store.Watch(ctx)
	if err != nil {
		return err
	}
	defer w.Stop()
	d.setStatus(func(s *schema.StorageStatus) { *s = schema.StorageStatus{State: schema.StorageSyncing} })
	retry := time.NewTicker(retryEvery)
	defer retry.Stop()
	initial := true
	for {
		select {
		case <-ctx.Done():
			return nil
		case kve, ok := <-w.Updates():
			if !ok {
				return errors.New("storage manifest watch ended")
			}
			// Take every change already delivered, up to the end of the
			// initial values: their files are fetched in parallel.
			batch, caughtUp := []jetstream.KeyValueEntry{}, kve == nil
		more:
			for kve != nil && len(batch) < 4096 {
				batch = append(batch, kve)
				select {
				case kve, ok = <-w.Updates():
					if !ok {
						return errors.New("storage manifest watch ended")
					}
					caughtUp = kve == nil
				default:
					break more
				}
			}
			m.applyBatch(ctx, batch)
			if caughtUp && initial {
				initial = false
				m.sweep()
			}
			var last jetstream.KeyValueEntry
			if len(batch) > 0 {
				last = batch[len(batch)-1]
			}
			m.report(initial, last)
		case <-retry.C:
			if len(m.failed) > 0 {
				var todo []filestore.Entry
				for p := range m.failed {
					if e, ok := m.want[p]; ok { // an invalid entry waits for a new one
						todo = append(todo, e)
					}
				}
				m.fetchAll(ctx, todo)
				m.report(initial, nil)
			}
		}
	}
}

// applyBatch makes a run of manifest changes true on disk: the newest
// change of each path wins, and the files to fetch are fetched in parallel.
func (m *mirrorer) applyBatch(ctx context.Context, batch []jetstream.KeyValueEntry) {
	newest := map[string]jetstream.KeyValueEntry{}
	var order []string
	for _, kve := range batch {
		if _, seen := newest[kve.Key()]; !seen {
			order = append(order, kve.Key())
		}
		newest[kve.Key()] = kve
	}
	var todo []filestore.Entry
	for _, k := range order {
		if e, ok := m.apply(newest[k]); ok {
			todo = append(todo, e)
		}
	}
	m.fetchAll(ctx, todo)
}

// apply records one manifest change; it returns the entry to fetch, if any.
func (m *mirrorer) apply(kve jetstream.KeyValueEntry) (filestore.Entry, bool) {
	if kve.Key() == filestore.ManifestKey {
		var man filestore.Manifest
		if err := json.Unmarshal(kve.Value(), &man); err == nil {
			m.d.setStatus(func(s *schema.StorageStatus) { s.ManifestFiles, s.ManifestBytes = man.Files, man.Bytes })
		}
		return filestore.Entry{}, false
	}
	p, ok := filestore.PathOf(kve.Key())
	if !ok {
		return filestore.Entry{}, false
	}
	if kve.Operation() != jetstream.KeyValuePut {
		m.set(p, nil)
		delete(m.failed, p)
		if filestore.CheckPath(p) == nil {
			m.remove(p)
		}
		return filestore.Entry{}, false
	}
	e, err := filestore.ParseEntry(kve.Value())
	if err == nil && e.Path != p {
		err = fmt.Errorf("storage entry for %q names %q", p, e.Path)
	}
	if err != nil {
		m.d.log.Error("refusing an invalid storage entry", "key", kve.Key(), "err", err)
		m.failed[p] = err
		return filestore.Entry{}, false
	}
	m.set(p, &e)
	return e, true
}

// fetchAll fetches entries, parallel at most at once, recording failures.
func (m *mirrorer) fetchAll(ctx context.Context, entries []filestore.Entry) {
	var mu sync.Mutex
	var g errgroup.Group
	g.SetLimit(parallel)
	for _, e := range entries {
		g.Go(func() error {
			err := m.fetch(ctx, e)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				m.failed[e.Path] = err
			} else {
				delete(m.failed, e.Path)
			}
			return nil
		})
	}
	g.Wait()
}

// fetch brings one file in, from the local data path when it holds the
// same file (a demoted leader's tree), otherwise from the Object Store.
func (m *mirrorer) fetch(ctx context.Context, e filestore.Entry) error {
	if e.Path == "" {
		return errors.New("invalid entry") // only a new entry can fix it
	}
	dst := filepath.Join(m.root, filepath.FromSlash(e.Path))
	if filestore.Matches(dst, e) {
		return nil
	}
	var err error
	if src := filepath.Join(m.seed, filepath.FromSlash(e.Path)); filestore.Matches(src, e) {
		err = filestore.CopyLocal(src, e, dst)
	}
	if !filestore.Matches(dst, e) {
		err = m.d.store.Fetch(ctx, e, dst, m.d.fetched)
	}
	if err != nil {
		if ctx.Err() == nil {
			m.d.log.Error("storage file not mirrored", "path", e.Path, "err", err)
		}
		return err
	}
	m.d.mirrored()
	return nil
}

// remove deletes a file the manifest no longer has, and empty parents.
func (m *mirrorer) remove(p string) {
	abs := filepath.Join(m.root, filepath.FromSlash(p))
	if err := os.Remove(abs); err != nil && !errors.Is(err, fs.ErrNotExist) {
		m.d.log.Warn("remove mirrored file", "path", p, "err", err)
		return
	}
	for dir := filepath.Dir(abs); dir != m.root && strings.HasPrefix(dir, m.root); dir = filepath.Dir(dir) {
		if os.Remove(dir) != nil {
			break // not empty
		}
	}
}

// sweep removes what the manifest does not list: leftovers of an
// interrupted transfer and files deleted while the mirror was down.
func (m *mirrorer) sweep() {
	removed := 0
	filepath.WalkDir(m.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		r, _ := filepath.Rel(m.root, p)
		if _, ok := m.want[filepath.ToSlash(r)]; !ok || strings.HasPrefix(d.Name(), filestore.TempPrefix) {
			m.remove(filepath.ToSlash(r))
			removed++
		}
		return nil
	})
	if removed > 0 {
		m.d.log.Info("removed files the storage manifest does not list", "files", removed)
	}
}

// report publishes the mirror's progress.
func (m *mirrorer) report(initial bool, kve jetstream.KeyValueEntry) {
	files, bytes := len(m.want), m.bytes
	var first error
	firstPath := ""
	for p, err := range m.failed {
		if first == nil || p < firstPath {
			first, firstPath = err, p
		}
	}
	m.d.setStatus(func(s *schema.StorageStatus) {
		s.Files, s.Bytes, s.Failed = files, bytes, len(m.failed)
		if kve != nil {
			s.Revision = kve.Revision()
		}
		s.Error = ""
		switch {
		case first != nil:
			s.State, s.Error = schema.StorageFailed, first.Error()
		case initial:
			s.State = schema.StorageSyncing
		default:
			s.State = schema.StorageSynced
		}
	})
}

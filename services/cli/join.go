package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/convex-cluster-manager/ccm/shared/config"
	"github.com/convex-cluster-manager/ccm/shared/filestore"
	"github.com/convex-cluster-manager/ccm/shared/fsutil"
	"github.com/convex-cluster-manager/ccm/shared/replica"
	"github.com/convex-cluster-manager/ccm/shared/schema"
	"github.com/convex-cluster-manager/ccm/shared/snapstore"
	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

func newJoin(stdout, stderr io.Writer) *ffcli.Command {
	fs := newFlagSet("ccm join", stderr)
	force := fs.Bool("force", false, "replace an existing shadow database (also: resync a node whose replication failed)")
	flags := config.Bind(fs)
	return &ffcli.Command{
		Name:       "join",
		ShortUsage: "ccm join [--force] [--config FILE]",
		ShortHelp:  "bootstrap this node's shadow database and storage directory from the cluster",
		LongHelp: "Downloads the cluster's newest snapshot into wal.replicaPath, verifies it, and records\n" +
			"its WAL position, so that ccm-walapply replays the stream from there. With no snapshot\n" +
			"stored, prepares an empty shadow that ccm-walapply fills from the start of the stream.\n" +
			"Then downloads every file of the storage manifest into wal.replicaPath/storage (files\n" +
			"already there whole are kept, so an interrupted join resumes), in the same progress display.\n" +
			"ccm-walapply must be stopped on this node while it runs.",
		FlagSet: fs,
		Options: config.ParseOptions(),
		Exec: func(ctx context.Context, args []string) error {
			return withClient(ctx, args, flags, func(c *client) error {
				return c.join(ctx, stdout, *force)
			})
		},
	}
}

func (c *client) join(ctx context.Context, w io.Writer, force bool) (err error) {
	node, path := c.cfg.NodeID, c.cfg.ShadowPath()
	if err := c.request(ctx, node, schema.ServiceWalapply, schema.VerbStatus, nil, nil); !errors.Is(err, errNotRunning) {
		return fmt.Errorf("%w: ccm-walapply is running on %s: stop it first (systemctl stop ccm-walapply)", ErrUsage, node)
	}
	if replica.Exists(path) && !force {
		return fmt.Errorf("%w: a shadow database already exists at %s (use --force to replace it)", ErrUsage, path)
	}
	js, err := jetstream.New(c.nc)
	if err != nil {
		return err
	}
	// What join writes belongs to ccm-walapply's user, whoever runs it
	// (root, usually): the owner of the replica directory, with the data
	// daemons' modes (the group writes too), not those of root's umask.
	defer syscall.Umask(syscall.Umask(0o007))
	defer func() {
		if oerr := fsutil.OwnTree(c.cfg.WAL.ReplicaPath); oerr != nil && err == nil {
			err = oerr
		}
	}()
	files, err := c.storageFiles(ctx, js)
	if err != nil {
		return err
	}
	var p *progress
	snap, err := replica.Bootstrap(ctx, js, c.cfg.ClusterID, path, func(s snapstore.Snapshot, n int64) {
		if p == nil {
			printSnapshot(w, s)
			p = newProgress(w, "download", s.Size+files.bytes)
		}
		p.update(n)
	})
	var dbBytes int64
	switch {
	case errors.Is(err, replica.ErrNoSnapshot):
		if err := c.joinFromStream(ctx, w, js, path); err != nil {
			return err
		}
		p = newProgress(w, "storage", files.bytes)
	case err != nil:
		return err
	default:
		if p == nil {
			printSnapshot(w, snap)
			p = newProgress(w, "download", snap.Size+files.bytes)
		}
		dbBytes = snap.Size
	}
	got, err := c.joinStorage(ctx, files, func(n int64) { p.update(dbBytes + n) })
	p.finish(dbBytes + got)
	if err != nil {
		return err
	}
	if files.store != nil {
		fmt.Fprintf(w, "storage: %d files (%s) in %s\n", len(files.entries), mib(files.bytes), c.cfg.ShadowStorageDir())
	}
	if snap.Name != "" {
		fmt.Fprintf(w, "%s joined cluster %s: shadow database %s at epoch %d TXID %d; start ccm-walapply to replay from sequence %d\n",
			c.cfg.NodeID, c.cfg.ClusterID, path, snap.Epoch, snap.TXID, snap.Seq+1)
	}
	return nil
}

func printSnapshot(w io.Writer, s snapstore.Snapshot) {
	fmt.Fprintf(w, "snapshot %s: epoch %d TXID %d, stream sequence %d, taken on %s at %s\n",
		s.Name, s.Epoch, s.TXID, s.Seq, s.Node, s.Created.Local().Format(time.RFC3339))
}

// storageTree is the cluster's storage manifest as join reads it.
type storageTree struct {
	store   *filestore.Store // nil: nothing replicated yet
	entries []filestore.Entry
	bytes   int64
}

func (c *client) storageFiles(ctx context.Context, js jetstream.JetStream) (storageTree, error) {
	var t storageTree
	store, err := filestore.Lookup(ctx, js, c.cfg.ClusterID)
	if errors.Is(err, filestore.ErrNone) {
		return t, nil
	}
	if err != nil {
		return t, err
	}
	entries, _, bad, err := store.Entries(ctx)
	if err != nil {
		return t, err
	}
	if len(bad) > 0 {
		return t, fmt.Errorf("the storage manifest holds %d invalid entries, first: %w", len(bad), bad[0])
	}
	t.store = store
	for _, e := range entries {
		t.entries = append(t.entries, e)
		t.bytes += e.Size
	}
	slices.SortFunc(t.entries, func(a, b filestore.Entry) int { return strings.Compare(a.Path, b.Path) })
	return t, nil
}

// joinStorage fetches every file of the manifest into the shadow storage
// directory; files already there whole are kept, so a join that was
// interrupted resumes. It returns the bytes done.
func (c *client) joinStorage(ctx context.Context, t storageTree, progress func(int64)) (int64, error) {
	var done int64
	for _, e := range t.entries {
		dst := filepath.Join(c.cfg.ShadowStorageDir(), filepath.FromSlash(e.Path))
		if !filestore.Matches(dst, e) {
			base := done
			if err := t.store.Fetch(ctx, e, dst, func(n int64) { base += n; progress(base) }); err != nil {
				return done, err
			}
		}
		done += e.Size
		progress(done)
	}
	return done, nil
}

// joinFromStream prepares an empty shadow when no snapshot exists; that
// works only while the stream still begins with an epoch marker.
func (c *client) joinFromStream(ctx context.Context, w io.Writer, js jetstream.JetStream, path string) error {
	s, err := js.Stream(ctx, walstream.Stream(c.cfg.ClusterID))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		if err := replica.Reset(path); err != nil {
			return err
		}
		fmt.Fprintf(w, "%s joined cluster %s: nothing replicated yet; ccm-walapply will start with the first change\n", c.cfg.NodeID, c.cfg.ClusterID)
		return nil
	}
	if err != nil {
		return fmt.Errorf("WAL stream: %w", err)
	}
	info := s.CachedInfo()
	if info.State.Msgs > 0 {
		first, err := s.GetMsg(ctx, info.State.FirstSeq)
		if err != nil {
			return fmt.Errorf("read the WAL stream's first message: %w", err)
		}
		if m, err := walstream.ParseMeta(first.Header); err != nil || m.Kind != walstream.KindMarker {
			return fmt.Errorf("no snapshot is stored and the WAL stream no longer starts at an epoch (first sequence %d): take one on a caught-up passive with `nats req %s ''` and join again",
				info.State.FirstSeq, schema.Endpoint(c.cfg.ClusterID, "<passive>", schema.ServiceSnapshot, schema.VerbNow))
		}
	}
	if err := replica.Reset(path); err != nil {
		return err
	}
	fmt.Fprintf(w, "%s joined cluster %s: no snapshot stored; ccm-walapply will replay the WAL stream from its start (%d messages, %s)\n",
		c.cfg.NodeID, c.cfg.ClusterID, info.State.Msgs, mib(int64(info.State.Bytes)))
	return nil
}

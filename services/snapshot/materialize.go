package snapshot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/convex-cluster-manager/ccm/shared/fsutil"
	"github.com/convex-cluster-manager/ccm/shared/replica"
	"github.com/convex-cluster-manager/ccm/shared/schema"
	"github.com/convex-cluster-manager/ccm/shared/snapstore"
	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

// errNothingNew means the stream holds nothing beyond the newest snapshot.
var errNothingNew = errors.New("nothing new since the newest snapshot")

// errReached ends a replay at its target sequence.
var errReached = errors.New("target reached")

// materialize builds a snapshot without a passive: it starts from the
// newest stored snapshot (or from nothing, if the stream still begins with
// an epoch) and applies the WAL stream up to its current end with the same
// verified applier that passives use. Only the stream is read, so the
// leader's database and write path are not touched. The caller removes dir.
func (d *Daemon) materialize(ctx context.Context, dir string) (string, replica.Position, error) {
	db := filepath.Join(dir, d.cfg.Backend.DBFile)
	if err := os.MkdirAll(dir, fsutil.DataDir); err != nil {
		return "", replica.Position{}, err
	}
	if err := replica.Reset(db); err != nil {
		return "", replica.Position{}, err
	}
	newest, err := d.store.Newest(ctx)
	switch {
	case errors.Is(err, snapstore.ErrNone):
	case err != nil:
		return "", replica.Position{}, err
	default:
		if err := d.store.Download(ctx, newest, db, nil); err != nil {
			return "", replica.Position{}, err
		}
		if err := replica.Install(db, replica.SnapshotPosition(newest)); err != nil {
			return "", replica.Position{}, err
		}
	}
	s, err := d.js.Stream(ctx, walstream.Stream(d.cfg.ClusterID))
	if err != nil {
		return "", replica.Position{}, fmt.Errorf("WAL stream: %w", err)
	}
	target := s.CachedInfo().State.LastSeq
	sh, err := replica.OpenShadow(db)
	if err != nil {
		return "", replica.Position{}, err
	}
	defer sh.Close()
	ap, err := replica.NewApplier(sh)
	if err != nil {
		return "", replica.Position{}, err
	}
	defer ap.Close()
	if ap.Consumed() >= target {
		return "", replica.Position{}, errNothingNew
	}
	err = replica.Follow(ctx, d.js, d.cfg.ClusterID, ap.Consumed()+1, func(m jetstream.Msg) error {
		md, err := m.Metadata()
		if err != nil {
			return err
		}
		if err := ap.Handle(md.Sequence.Stream, m.Headers(), m.Data()); err != nil {
			return err
		}
		if ap.Consumed() >= target {
			return errReached
		}
		return nil
	})
	if !errors.Is(err, errReached) {
		return "", replica.Position{}, fmt.Errorf("replay the WAL stream to sequence %d: %w", target, err)
	}
	pos := ap.Position()
	if pos.PageSize == 0 {
		return "", replica.Position{}, errors.New("the WAL stream holds no complete database yet")
	}
	return db, pos, nil
}

// passiveAvailable reports whether some passive reports itself following
// and within election.maxLagTxids: it will take the snapshot instead.
func (d *Daemon) passiveAvailable(ctx context.Context) bool {
	lister, err := d.kv.ListKeysFiltered(ctx, schema.NodeKeys+".apply")
	if err != nil {
		return false
	}
	avail := false
	for key := range lister.Keys() {
		ent, err := d.kv.Get(ctx, key)
		if err != nil {
			continue
		}
		var st schema.ApplyStatus
		if json.Unmarshal(ent.Value(), &st) == nil && st.Node != d.cfg.NodeID && st.State == schema.ApplyFollowing && st.Complete &&
			st.LagTXIDs >= 0 && st.LagTXIDs <= int64(d.cfg.Election.MaxLagTXIDs) {
			avail = true
		}
	}
	return avail
}

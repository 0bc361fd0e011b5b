package replica

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/convex-cluster-manager/ccm/shared/snapstore"
)

// ErrNoSnapshot means Bootstrap found no snapshot to start from.
var ErrNoSnapshot = snapstore.ErrNone

// Bootstrap replaces the shadow database at dbPath with the cluster's
// newest snapshot, verified, and records its position; walapply then
// replays the stream after it. progress, if set, sees bytes downloaded.
func Bootstrap(ctx context.Context, js jetstream.JetStream, cluster, dbPath string, progress func(snapstore.Snapshot, int64)) (snapstore.Snapshot, error) {
	store, err := snapstore.Lookup(ctx, js, cluster)
	if err != nil {
		return snapstore.Snapshot{}, err
	}
	snap, err := store.Newest(ctx)
	if err != nil {
		return snap, err
	}
	if err := Reset(dbPath); err != nil {
		return snap, err
	}
	var p func(int64)
	if progress != nil {
		p = func(n int64) { progress(snap, n) }
	}
	if err := store.Download(ctx, snap, dbPath, p); err != nil {
		return snap, err
	}
	if err := Install(dbPath, SnapshotPosition(snap)); err != nil {
		return snap, fmt.Errorf("install snapshot %s: %w", snap.Name, err)
	}
	return snap, nil
}

// SnapshotPosition is the position of a shadow made from snap.
func SnapshotPosition(snap snapstore.Snapshot) Position {
	return Position{Epoch: snap.Epoch, TXID: snap.TXID, Seq: snap.Seq, Checksum: snap.Checksum,
		PageSize: snap.PageSize, Captured: snap.Captured, Bytes: snap.Bytes, Chain: snap.Chain}
}

package elector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/convex-cluster-manager/ccm/shared/natsconn"
	"github.com/convex-cluster-manager/ccm/shared/schema"
	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

// lagRank is the campaign delay per TXID of lag, so that among several
// candidates the most advanced one creates the key first.
const (
	lagRank    = 2 * time.Millisecond
	lagRankMiB = 10 * time.Millisecond
)

// eligible decides whether this node may campaign: its shadow database must
// be within the lag bounds of the WAL stream's end (lagEligible), as its
// ccm-walapply measures it now. A cluster without replication (no WAL
// stream, or one that never held a message) has nothing to lag behind. It
// returns the campaign delay.
func (e *Elector) eligible(ctx context.Context) (time.Duration, error) {
	return e.eligibleNode(ctx, e.node)
}

// eligibleNode is eligible for any node of the cluster: a leader checks
// the node it hands over to.
func (e *Elector) eligibleNode(ctx context.Context, node string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, max(e.heartbeat/4, 100*time.Millisecond))
	defer cancel()
	b, err := natsconn.Call(ctx, e.nc, e.cluster, node, schema.ServiceWalapply, schema.VerbPosition, nil, time.Minute)
	if errors.Is(err, natsconn.ErrNotRunning) {
		held, serr := e.streamHeldData(ctx)
		if serr != nil {
			return 0, serr
		}
		if held {
			return 0, fmt.Errorf("ccm-walapply is not running on %s and the WAL stream has held data: its database may be behind it", node)
		}
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("ask ccm-walapply on %s for its position: %w", node, err)
	}
	var st schema.ApplyStatus
	if err := json.Unmarshal(b, &st); err != nil {
		return 0, fmt.Errorf("ccm-walapply position %q: %w", b, err)
	}
	return lagEligible(st, e.maxLag, e.maxLagBytes, e.heartbeat)
}

// streamHeldData reports whether the WAL stream exists and has ever held
// a message (its messages may all have aged out since).
func (e *Elector) streamHeldData(ctx context.Context) (bool, error) {
	s, err := e.js.Stream(ctx, walstream.Stream(e.cluster))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("WAL stream: %w", err)
	}
	return s.CachedInfo().State.LastSeq > 0, nil
}

// lagEligible decides on a passive's apply status: replication running,
// a shadow that has held a whole database (unless the stream is empty),
// and within both lag bounds. Candidates further behind wait longer
// (lagRank per TXID, lagRankMiB per MiB), up to a heartbeat.
func lagEligible(st schema.ApplyStatus, maxTXIDs, maxBytes int, heartbeat time.Duration) (time.Duration, error) {
	switch {
	case st.State == schema.ApplyBehindRetention:
		return 0, fmt.Errorf("behind the WAL stream's retention: %s", st.Error)
	case st.State == schema.ApplyOpening:
		return 0, fmt.Errorf("the shadow database is not open yet: %s", st.Error)
	case st.Error != "":
		return 0, fmt.Errorf("replication failed: %s", st.Error)
	case st.StreamSeq == 0:
		return 0, nil // nothing replicated yet
	case !st.Complete:
		return 0, fmt.Errorf("the shadow database has never held a complete database")
	case st.LagTXIDs < 0 || st.LagBytes < 0:
		return 0, fmt.Errorf("a full copy of the database is in flight")
	case st.LagTXIDs > int64(maxTXIDs):
		return 0, fmt.Errorf("%d TXIDs behind the WAL stream (at most %d allowed)", st.LagTXIDs, maxTXIDs)
	case st.LagBytes > int64(maxBytes):
		return 0, fmt.Errorf("%d bytes behind the WAL stream (at most %d allowed)", st.LagBytes, maxBytes)
	}
	return min(time.Duration(st.LagTXIDs)*lagRank+time.Duration(st.LagBytes>>20)*lagRankMiB, heartbeat), nil
}

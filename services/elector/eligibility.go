package elector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

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
// ccm-walapply measures it now. A cluster without replication (no WAL stream, or an
// empty one) has nothing to lag behind. It returns the campaign delay.
func (e *Elector) eligible(ctx context.Context) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, max(e.heartbeat/4, 100*time.Millisecond))
	defer cancel()
	msg, err := e.nc.RequestWithContext(ctx, schema.Endpoint(e.cluster, e.node, schema.ServiceWalapply, "position"), nil)
	if errors.Is(err, nats.ErrNoResponders) {
		s, serr := e.js.Stream(ctx, walstream.Stream(e.cluster))
		if errors.Is(serr, jetstream.ErrStreamNotFound) {
			return 0, nil
		}
		if serr != nil {
			return 0, fmt.Errorf("WAL stream: %w", serr)
		}
		if s.CachedInfo().State.Msgs == 0 {
			return 0, nil
		}
		return 0, fmt.Errorf("ccm-walapply is not running and the WAL stream holds %d messages", s.CachedInfo().State.Msgs)
	}
	if err != nil {
		return 0, fmt.Errorf("ask ccm-walapply for its position: %w", err)
	}
	if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
		return 0, fmt.Errorf("ccm-walapply: %s", msg.Header.Get(micro.ErrorHeader))
	}
	var st schema.ApplyStatus
	if err := json.Unmarshal(msg.Data, &st); err != nil {
		return 0, fmt.Errorf("ccm-walapply position %q: %w", msg.Data, err)
	}
	return lagEligible(st, e.maxLag, e.maxLagBytes, e.heartbeat)
}

// lagEligible decides on a passive's apply status: replication running,
// a shadow that has held a whole database (unless the stream is empty),
// and within both lag bounds. Candidates further behind wait longer
// (lagRank per TXID, lagRankMiB per MiB), up to a heartbeat.
func lagEligible(st schema.ApplyStatus, maxTXIDs, maxBytes int, heartbeat time.Duration) (time.Duration, error) {
	switch {
	case st.State == schema.ApplyBehindRetention:
		return 0, fmt.Errorf("behind the WAL stream's retention: %s", st.Error)
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

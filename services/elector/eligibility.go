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
const lagRank = 2 * time.Millisecond

// eligible decides whether this node may campaign: its shadow database must
// be within maxLag TXIDs of the WAL stream's end, as its ccm-walapply
// measures it now. A cluster without replication (no WAL stream, or an
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
	switch {
	case st.Error != "":
		return 0, fmt.Errorf("replication failed: %s", st.Error)
	case st.LagTXIDs < 0:
		return 0, fmt.Errorf("the shadow database has not reached the stream's newest epoch")
	case st.LagTXIDs > int64(e.maxLag):
		return 0, fmt.Errorf("%d TXIDs behind the WAL stream (at most %d allowed)", st.LagTXIDs, e.maxLag)
	}
	return min(time.Duration(st.LagTXIDs)*lagRank, e.heartbeat), nil
}

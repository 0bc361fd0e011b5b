package elector

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/convex-cluster-manager/ccm/shared/filestore"
	"github.com/convex-cluster-manager/ccm/shared/schema"
	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

// placementEvery is how often a serving leader checks where the raft
// leaders of the cluster's streams are.
const placementEvery = 30 * time.Second

// ledStreams are the streams a failover needs at once: the lease, the WAL
// stream and the storage manifest and objects.
func (e *Elector) ledStreams() []string {
	return []string{
		walstream.Stream(e.cluster),
		"KV_" + filestore.FilesBucket(e.cluster),
		"OBJ_" + filestore.BlobsBucket(e.cluster),
		"KV_" + schema.Bucket(e.cluster), // last: the lease pauses least after a renewal
	}
}

// placeStreams starts moveStreamLeaders beside the loop, at most one at a
// time and once per placementEvery unless now is set.
func (e *Elector) placeStreams(now bool) {
	if !now && time.Since(e.placedAt) < placementEvery {
		return
	}
	if !e.placing.CompareAndSwap(false, true) {
		return
	}
	e.placedAt = time.Now()
	ctx := e.runCtx
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer e.placing.Store(false)
		e.moveStreamLeaders(ctx)
	}()
}

// moveStreamLeaders asks JetStream to elect another raft leader for each of
// those streams that this node's NATS server leads. When this node dies,
// the survivors then need no JetStream election before one of them can
// take the lease and promote: with the stream leaders on the dead node
// that election took most of a crash failover's time.
func (e *Elector) moveStreamLeaders(ctx context.Context) {
	own := e.nc.ConnectedServerName()
	if own == "" {
		return
	}
	for _, name := range e.ledStreams() {
		if s := e.State(); s.Role != schema.RoleLeader || !s.Ready {
			return
		}
		if err := e.stepDown(ctx, name, own); err != nil {
			e.log.Warn("move a stream leader off this node's NATS server", "stream", name, "err", err)
		}
	}
}

// stepDown asks stream's raft leader to step down if it is own.
func (e *Elector) stepDown(ctx context.Context, stream, own string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	s, err := e.js.Stream(ctx, stream)
	if err != nil {
		return nil // not created (yet): nothing to move
	}
	info, err := s.Info(ctx)
	if err != nil {
		return fmt.Errorf("stream info: %w", err)
	}
	if info.Cluster == nil || info.Cluster.Leader != own || len(info.Cluster.Replicas) == 0 {
		return nil
	}
	start := time.Now()
	msg, err := e.nc.RequestWithContext(ctx, "$JS.API.STREAM.LEADER.STEPDOWN."+stream, nil)
	if err != nil {
		return err
	}
	var r struct {
		Success bool `json:"success"`
		Error   *struct {
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &r); err != nil {
		return fmt.Errorf("step-down reply %q: %w", msg.Data, err)
	}
	if !r.Success {
		if r.Error != nil {
			return fmt.Errorf("step-down refused: %s", r.Error.Description)
		}
		return fmt.Errorf("step-down refused: %s", msg.Data)
	}
	e.log.Info("moved a stream leader off this node's NATS server", "stream", stream, "server", own, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

package elector

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/convex-cluster-manager/ccm/shared/filestore"
	"github.com/convex-cluster-manager/ccm/shared/schema"
	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

// Placement timings (variables only so that tests can shorten them).
var (
	// placementEvery is how often every elector checks where the raft
	// leaders of the cluster's streams are and which peers are current.
	placementEvery = 5 * time.Second
	// currentFor is how long a peer must have been seen current (every
	// check, no lag, heard from lately) before a stream's leadership is
	// handed to it: a server restarted seconds ago may still be catching
	// the stream up, and a raft leader handed to it leaves the stream
	// without one until it has.
	currentFor = 15 * time.Second
)

// FailoverStreams are the streams a failover of cluster needs at once:
// the WAL stream, the storage manifest and objects, and the lease.
func FailoverStreams(cluster string) []string {
	return []string{
		walstream.Stream(cluster),
		"KV_" + filestore.FilesBucket(cluster),
		"OBJ_" + filestore.BlobsBucket(cluster),
		"KV_" + schema.Bucket(cluster), // last: the lease pauses least after a renewal
	}
}

// placeStreams starts checkStreams beside the loop, at most one at a time
// and once per placementEvery; now skips the wait (a promotion that just
// completed moves the streams its node's server leads at once).
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
		e.checkStreams(ctx)
	}()
}

// checkStreams records, on every node, which peers of each of those
// streams are current, so that a node has that history the moment it
// starts serving; a serving leader then hands the raft leadership of each
// stream its own NATS server leads to a peer current for currentFor.
// When this node dies, the survivors need no JetStream election (4–9 s)
// before one of them can take the lease and promote. Without such a peer
// nothing moves: a step-down to a peer still catching up once left the
// WAL stream without a leader for over 17 s.
func (e *Elector) checkStreams(ctx context.Context) {
	own := e.nc.ConnectedServerName()
	if own == "" {
		return
	}
	for _, name := range FailoverStreams(e.cluster) {
		s := e.State()
		if s.Role == schema.RoleStarting {
			return
		}
		if err := e.stepDown(ctx, name, own); err != nil {
			level := slog.LevelDebug // a passive only watches
			if s.Role == schema.RoleLeader {
				level = slog.LevelWarn
			}
			e.log.Log(ctx, level, "move a stream leader off this node's NATS server", "stream", name, "err", err)
		}
	}
}

// stepDown records which peers of stream are current and, on a serving
// leader, hands its leadership from own to the one current longest, if
// for currentFor.
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
	if info.Cluster == nil || len(info.Cluster.Replicas) == 0 {
		return nil
	}
	now := time.Now()
	since := e.current[stream]
	if since == nil || now.Sub(e.checked[stream]) > max(3*max(placementEvery, e.heartbeat), currentFor) {
		since = map[string]time.Time{} // not watched lately: start over
		e.current[stream] = since
	}
	e.checked[stream] = now
	var target string
	for _, p := range info.Cluster.Replicas {
		if !p.Current || p.Offline || p.Lag != 0 || p.Active > 2*time.Second {
			delete(since, p.Name)
			continue
		}
		if _, ok := since[p.Name]; !ok {
			since[p.Name] = now
		}
		if now.Sub(since[p.Name]) >= currentFor && (target == "" || since[p.Name].Before(since[target])) {
			target = p.Name
		}
	}
	for name := range since {
		if !slices.ContainsFunc(info.Cluster.Replicas, func(p *jetstream.PeerInfo) bool { return p.Name == name }) {
			delete(since, name) // the leader itself, or a peer no longer in the group
		}
	}
	if s := e.State(); s.Role != schema.RoleLeader || !s.Ready || info.Cluster.Leader != own || target == "" {
		return nil
	}
	body, _ := json.Marshal(map[string]any{"placement": map[string]string{"preferred": target}})
	start := time.Now()
	msg, err := e.nc.RequestWithContext(ctx, "$JS.API.STREAM.LEADER.STEPDOWN."+stream, body)
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
	e.log.Info("moved a stream leader off this node's NATS server", "stream", stream, "from", own, "to", target, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

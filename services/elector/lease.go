package elector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// ErrBucketMismatch means the cluster's KV bucket exists with a TTL that
// differs from this node's election.leaderTtlMs.
var ErrBucketMismatch = errors.New("KV bucket settings differ from this node's configuration")

// openBucket creates the cluster's KV bucket, or opens it and checks that
// its TTL matches ours: all nodes must agree on the lease length.
func openBucket(ctx context.Context, js jetstream.JetStream, cluster string, ttl time.Duration, replicas int) (jetstream.KeyValue, error) {
	name := schema.Bucket(cluster)
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:         name,
		Description:    "ccm leader lease and node status of cluster " + cluster,
		History:        1,
		TTL:            ttl,
		LimitMarkerTTL: max(ttl, time.Second),
		Storage:        jetstream.FileStorage,
		Replicas:       replicas,
	})
	if err == nil {
		return kv, nil
	}
	if !errors.Is(err, jetstream.ErrBucketExists) {
		return nil, fmt.Errorf("create KV bucket %s: %w", name, err)
	}
	kv, err = js.KeyValue(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("open KV bucket %s: %w", name, err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("KV bucket %s status: %w", name, err)
	}
	if st.TTL() != ttl {
		return nil, fmt.Errorf("%w: bucket %s has TTL %s but election.leaderTtlMs is %d: every node must use the same TTL",
			ErrBucketMismatch, name, st.TTL(), ttl.Milliseconds())
	}
	return kv, nil
}

// decodeLeader parses the leader key's value.
func decodeLeader(e jetstream.KeyValueEntry) (schema.LeaderRecord, error) {
	var r schema.LeaderRecord
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return r, fmt.Errorf("leader key revision %d: invalid record %q: %w", e.Revision(), e.Value(), err)
	}
	if r.Node == "" {
		return r, fmt.Errorf("leader key revision %d: record names no node", e.Revision())
	}
	return r, nil
}

func encode(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("encode %T: %v", v, err)) // only plain structs are encoded
	}
	return b
}

// isConflict reports whether err is a failed compare-and-set on the key.
func isConflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) ||
		errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted)
}

// sync settles the starting role from the leader key: a key that names this
// node is resumed with compare-and-set (the elector restarted), anything
// else makes the node passive.
func (e *Elector) sync(ctx context.Context) {
	defer e.markReady()
	if e.State().Role != schema.RoleStarting {
		return
	}
	ent, err := e.kv.Get(ctx, schema.KeyLeader)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted):
		e.apply(Event{Kind: Synced})
		e.campaign(ctx)
		return
	case err != nil:
		e.log.Warn("read leader key", "err", err)
		return // stay starting; the next tick retries
	}
	rec, derr := decodeLeader(ent)
	if derr != nil {
		e.log.Error("ignoring invalid leader record", "err", derr)
		e.apply(Event{Kind: Synced})
		return
	}
	epoch := rec.EpochAt(ent.Revision())
	e.gate.Admit(epoch)
	if rec.Node == e.node && rec.Serving() {
		e.rev, e.since, e.resumeReady = ent.Revision(), rec.Since, rec.Ready
		if e.renewAt(ctx, epoch, rec.Since) == nil {
			e.log.Info("resumed leadership after restart", "epoch", epoch)
			return
		}
	}
	if rec.HandoverTo == e.node {
		e.apply(Event{Kind: Synced})
		e.take(ctx, ent.Revision(), rec)
		return
	}
	e.apply(Event{Kind: Synced, Node: leaderOf(rec), Epoch: epoch})
}

// verify re-reads the leader key on a passive: a vacant key starts a
// campaign; a key naming this node although it is passive (left over from
// before it fenced itself) is released so that others can campaign.
func (e *Elector) verify(ctx context.Context) {
	octx, cancel := context.WithTimeout(ctx, e.heartbeat/2)
	defer cancel()
	ent, err := e.kv.Get(octx, schema.KeyLeader)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted):
		e.apply(Event{Kind: Vacated})
		e.campaign(ctx)
	case err != nil:
		e.log.Debug("read leader key", "err", err)
	default:
		rec, derr := decodeLeader(ent)
		if derr != nil {
			return
		}
		if rec.Node == e.node && rec.Serving() {
			if err := e.kv.Delete(octx, schema.KeyLeader, jetstream.LastRevision(ent.Revision())); err != nil {
				e.log.Warn("release stale leader key", "err", err)
			} else {
				e.log.Info("released stale leader key left from before self-fencing", "revision", ent.Revision())
			}
		}
	}
}

// campaign tries to create the leader key if this node may lead: the
// cluster is not paused, and the node is passive, not holding off after a
// demotion, and caught up (eligible); the more it lags, the longer it
// waits before trying.
func (e *Elector) campaign(ctx context.Context) {
	if e.paused() {
		return
	}
	e.contest(ctx)
}

// contest is a campaign, also while the cluster is paused (ccm promote).
func (e *Elector) contest(ctx context.Context) {
	if e.State().Role != schema.RolePassive || time.Now().Before(e.holdOff) || e.left {
		return
	}
	delay, err := e.eligible(ctx)
	if err != nil {
		e.setIneligible(err)
		return
	}
	e.setIneligible(nil)
	if delay > 0 {
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
	}
	octx, cancel := context.WithTimeout(ctx, e.heartbeat)
	defer cancel()
	now := time.Now()
	rec := schema.LeaderRecord{Node: e.node, Since: now, RenewedAt: now, LeaderTTLMs: e.ttl.Milliseconds()}
	e.metrics.campaigns.Inc()
	rev, err := e.kv.Create(octx, schema.KeyLeader, encode(rec))
	if err != nil {
		if !isConflict(err) {
			e.log.Warn("campaign", "err", err)
		}
		return
	}
	e.rev, e.since = rev, now
	e.gate.Admit(rev)
	e.apply(Event{Kind: Won, Epoch: rev, At: now})
	e.renewAt(ctx, rev, now) // record the epoch in the key
}

// take completes a handover addressed to this node with a compare-and-set
// on the handover record's revision.
// A node that is not eligible (not replicating, or too far behind)
// refuses it and releases the key, so that the others campaign.
func (e *Elector) take(ctx context.Context, rev uint64, from schema.LeaderRecord) {
	octx, cancel := context.WithTimeout(ctx, e.heartbeat)
	defer cancel()
	if _, err := e.eligible(octx); err != nil {
		e.log.Warn("refusing the handover: not eligible; releasing the leader key", "from", from.Node, "reason", err)
		if derr := e.kv.Delete(octx, schema.KeyLeader, jetstream.LastRevision(rev)); derr != nil {
			e.log.Warn("release the handed-over leader key (it expires by itself)", "err", derr)
		}
		e.apply(Event{Kind: Vacated})
		return
	}
	now := time.Now()
	rec := schema.LeaderRecord{Node: e.node, Since: now, RenewedAt: now, LeaderTTLMs: e.ttl.Milliseconds()}
	newRev, err := e.kv.Update(octx, schema.KeyLeader, encode(rec), rev)
	if err != nil {
		e.log.Warn("take over from handover", "from", from.Node, "err", err)
		return
	}
	e.rev, e.since = newRev, now
	e.gate.Admit(newRev)
	e.apply(Event{Kind: Won, Epoch: newRev, At: now, Reason: "handover from " + from.Node})
	e.renewAt(ctx, newRev, now)
}

// renewAt renews the lease of epoch with compare-and-set on the last
// revision written. A conflict means the leadership is lost.
func (e *Elector) renewAt(ctx context.Context, epoch uint64, since time.Time) error {
	now := time.Now()
	deadline := now.Add(e.heartbeat)
	if s := e.State(); s.Role == schema.RoleLeader && s.Deadline.Before(deadline) {
		deadline = s.Deadline
	}
	octx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	rec := schema.LeaderRecord{Node: e.node, Epoch: epoch, Since: since, RenewedAt: now, LeaderTTLMs: e.ttl.Milliseconds(), Ready: e.State().Ready}
	if e.State().Role == schema.RoleStarting {
		rec.Ready = e.resumeReady
	}
	rev, err := e.kv.Update(octx, schema.KeyLeader, encode(rec), e.rev)
	if isConflict(err) && e.adoptOwnWrite(octx, epoch, since) {
		rev, err = e.kv.Update(octx, schema.KeyLeader, encode(rec), e.rev)
	}
	if err != nil {
		e.metrics.renewFailures.Inc()
		if isConflict(err) {
			e.apply(Event{Kind: Lost, Reason: fmt.Sprintf("renewal compare-and-set failed: %v", err)})
		} else {
			e.log.Warn("lease renewal failed; retrying", "err", err, "deadline", e.State().Deadline)
		}
		return err
	}
	e.rev = rev
	e.metrics.renewals.Inc()
	if e.State().Role == schema.RoleStarting {
		e.apply(Event{Kind: Won, Epoch: epoch, At: now, Reason: "resumed after restart", Ready: e.resumeReady})
	} else {
		e.apply(Event{Kind: Renewed, At: now})
	}
	e.mu.Lock()
	e.renewed = now
	e.mu.Unlock()
	e.publish(e.State())
	return nil
}

// adoptOwnWrite handles a renewal refused for a stale revision: when the
// key still holds this node's serving record of epoch, it was this node's
// own earlier write that timed out and was delivered later (a short cut
// holds requests back, it does not drop them), so nobody else took the
// key; its revision becomes the one to renew. Anything else is a lost lease.
func (e *Elector) adoptOwnWrite(ctx context.Context, epoch uint64, since time.Time) bool {
	ent, err := e.kv.Get(ctx, schema.KeyLeader)
	if err != nil || ent.Revision() <= e.rev {
		return false
	}
	rec, err := decodeLeader(ent)
	if err != nil || rec.Node != e.node || !rec.Serving() || rec.Epoch != epoch || !rec.Since.Equal(since) {
		return false
	}
	e.log.Info("renewal found its own delayed write at a newer revision: renewing from it", "epoch", epoch, "was", e.rev, "revision", ent.Revision())
	e.rev = ent.Revision()
	return true
}

package walapply

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/convex-cluster-manager/ccm/shared/daemon"
	"github.com/convex-cluster-manager/ccm/shared/schema"
	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

// Status reports the applied position, lag and state.
func (d *Daemon) Status() any {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.status
	st.Node = d.cfg.NodeID
	switch {
	case d.left:
		st.State = schema.ApplyLeft
	case d.released:
		st.State = schema.ApplyReleased
	case d.behind != nil:
		st.State, st.Error = schema.ApplyBehindRetention, d.behind.Error()
	case d.failed != nil:
		st.State, st.Error = schema.ApplyFailed, d.failed.Error()
	case d.unopened != nil:
		st.State, st.Error = schema.ApplyOpening, d.unopened.Error()
	case d.paused:
		st.State = schema.ApplyPaused
	case d.following:
		st.State = schema.ApplyFollowing
	default:
		st.State = schema.ApplyIdle
	}
	if d.applier != nil {
		st.Epoch, st.TXID, st.Seq, st.Complete = d.pos.Epoch, uint64(d.pos.TXID), d.consumed, d.pos.Complete()
	}
	return st
}

// publish refreshes the lag from the stream's newest message and writes the
// status to the cluster bucket, every second.
func (d *Daemon) publish(ctx context.Context) error {
	daemon.PublishStatus(ctx, d.js, d.cfg.ClusterID, schema.ApplyKey(d.cfg.NodeID), d.log, func() (any, bool) {
		d.refreshLag(ctx)
		d.mu.Lock()
		left := d.left
		d.mu.Unlock()
		st := d.Status().(schema.ApplyStatus)
		st.UpdatedAt = time.Now()
		return st, !left
	})
	return nil
}

// refreshLag compares the applied position with the stream's newest
// message, and notices a position that aged out of the stream.
func (d *Daemon) refreshLag(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	d.mu.Lock()
	s := d.stream
	d.mu.Unlock()
	if s == nil {
		return // still starting
	}
	info, err := s.Info(ctx)
	if err != nil {
		return
	}
	last, meta, err := walstream.Last(ctx, s)
	if err != nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	st := &d.status
	st.StreamSeq, st.LagMs, st.LagTXIDs, st.LagBytes, st.FullCopy = last, 0, 0, 0, ""
	if d.applier == nil || d.consumed >= last {
		return
	}
	if first := info.State.FirstSeq; d.consumed+1 < first && d.behind == nil && !d.released && !d.left {
		d.behind = fmt.Errorf("the next message (sequence %d) is no longer in the WAL stream, which starts at %d", d.consumed+1, first)
		d.log.Warn("replication behind retention: re-bootstrapping from the newest snapshot", "err", d.behind)
		d.poke()
	}
	p := d.pos
	switch {
	case meta.Kind == walstream.KindLTX && meta.Chain == p.Chain && p.Chain != 0:
		st.LagTXIDs = max(0, int64(meta.MaxTXID)-int64(p.TXID))
		st.LagBytes = max(0, meta.End-p.Bytes)
	case meta.Kind == walstream.KindMarker && meta.Base != nil && meta.Base.Chain == p.Chain && p.Chain != 0:
		st.LagTXIDs = max(0, int64(meta.Base.TXID)-int64(p.TXID))
		st.LagBytes = max(0, meta.Base.End-p.Bytes)
	default: // another chain: a full copy is in flight, or the shadow predates chains
		st.LagTXIDs, st.LagBytes = -1, -1
		st.FullCopy = fullCopyReason(ctx, s, last, meta)
	}
	if meta.Kind == walstream.KindLTX && !p.Captured.IsZero() {
		st.LagMs = max(0, meta.Captured.Sub(p.Captured).Milliseconds())
	}
}

// fullCopyReason reads why the chain of the stream's last message (at seq,
// with meta) started with a full copy, from the marker that opened it.
func fullCopyReason(ctx context.Context, s jetstream.Stream, seq uint64, meta walstream.Meta) string {
	if meta.Kind == walstream.KindLTX {
		seq = meta.Chain
	}
	marker, err := walstream.At(ctx, s, seq)
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	if marker.Kind != walstream.KindMarker {
		return "unknown"
	}
	if marker.Reason == "" {
		return "not recorded (an older version)"
	}
	return marker.Reason
}

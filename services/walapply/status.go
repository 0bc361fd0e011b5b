package walapply

import (
	"context"
	"errors"
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
		st.State = "left"
	case d.released:
		st.State = "released"
	case d.failed != nil:
		st.State, st.Error = "failed", d.failed.Error()
	case d.paused:
		st.State = "paused"
	case d.following:
		st.State = "following"
	default:
		st.State = "idle"
	}
	if d.applier != nil {
		st.Epoch, st.TXID, st.Seq = d.pos.Epoch, uint64(d.pos.TXID), d.consumed
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

// refreshLag compares the applied position with the stream's newest message.
func (d *Daemon) refreshLag(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	d.mu.Lock()
	s := d.stream
	d.mu.Unlock()
	if s == nil {
		return // still starting
	}
	m, err := s.GetLastMsgForSubject(ctx, walstream.Subject(d.cfg.ClusterID))
	if err != nil {
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			d.mu.Lock()
			d.status.StreamSeq, d.status.LagMs, d.status.LagTXIDs = 0, 0, 0
			d.mu.Unlock()
		}
		return
	}
	meta, err := walstream.ParseMeta(m.Header)
	if err != nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.applier == nil {
		return
	}
	p := d.pos
	st := &d.status
	st.StreamSeq = m.Sequence
	st.LagMs, st.LagTXIDs = 0, 0
	if d.consumed >= m.Sequence {
		return
	}
	switch {
	case meta.Epoch != p.Epoch:
		st.LagTXIDs = -1
	case meta.Kind == walstream.KindLTX:
		st.LagTXIDs = int64(meta.MaxTXID) - int64(p.TXID)
	}
	if meta.Kind == walstream.KindLTX && !p.Captured.IsZero() {
		st.LagMs = max(0, meta.Captured.Sub(p.Captured).Milliseconds())
	}
}

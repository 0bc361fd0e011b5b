package walstream

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Window is how many WAL messages an appender keeps unacknowledged.
const Window = 8

// ackWait is how long an append waits for its acknowledgement before it
// reads the stream to learn what became of it (a variable for tests).
var ackWait = 5 * time.Second

// inflight is one message of a pipe, to be stored at seq.
type inflight struct {
	seq uint64
	msg *nats.Msg
	ack jetstream.PubAckFuture // nil when its outcome is known or it was not sent
	err error                  // why it could not be sent
}

// pipe appends messages in order with up to Window of them unacknowledged.
// Each message expects the stream's last sequence to be the one before it,
// so the stream stores them in order or refuses them. An append whose
// outcome is unknown — an error, a lost or late acknowledgement, a refusal
// after a lost acknowledgement — is resolved by reading the stream: a
// message there with our ID is ours, any other message fences the
// appender, and what is missing is sent again.
type pipe struct {
	a    *Appender
	q    []*inflight
	free [][]byte // payload buffers of confirmed messages, for reuse
}

// buffer returns a payload buffer of ChunkSize bytes.
func (p *pipe) buffer() []byte {
	if n := len(p.free); n > 0 {
		b := p.free[n-1]
		p.free = p.free[:n-1]
		return b[:ChunkSize]
	}
	return make([]byte, ChunkSize)
}

// send appends a message with header hdr; it returns once at most
// Window-1 messages are unacknowledged.
func (p *pipe) send(ctx context.Context, hdr nats.Header, data []byte, id string) error {
	if p.a.fenced != nil {
		return p.a.fenced
	}
	f := p.next(hdr, data, id)
	p.q = append(p.q, f)
	p.publish(f)
	for len(p.q) >= Window {
		if err := p.settle(ctx); err != nil {
			return err
		}
	}
	return nil
}

// flush waits until every message is stored.
func (p *pipe) flush(ctx context.Context) error {
	for len(p.q) > 0 {
		if err := p.settle(ctx); err != nil {
			return err
		}
	}
	return nil
}

// next returns the message that follows the pipe's last one. Its ID names
// the epoch, the sequence it expects before it and id, so that a retry is
// the same message; it expects the sequence before it (see retract).
func (p *pipe) next(hdr nats.Header, data []byte, id string) *inflight {
	seq := p.a.lastSeq.Load() + uint64(len(p.q)) + 1
	hdr.Set(jetstream.MsgIDHeader, fmt.Sprintf("%d.%d.%s", p.a.epoch, seq-1, id))
	hdr.Set(jetstream.ExpectedLastSeqHeader, strconv.FormatUint(seq-1, 10))
	return &inflight{seq: seq, msg: &nats.Msg{Subject: p.a.subject, Header: hdr, Data: data}}
}

func (p *pipe) publish(f *inflight) {
	f.ack, f.err = p.a.pub.PublishMsgAsync(f.msg)
	if f.err != nil {
		f.ack = nil
	}
}

// settle waits for the outcome of the oldest message.
func (p *pipe) settle(ctx context.Context) error {
	f := p.q[0]
	if f.ack == nil {
		return p.resolve(ctx, f.err)
	}
	select {
	case ack := <-f.ack.Ok():
		f.ack = nil
		if ack.Sequence != f.seq {
			return p.resolve(ctx, fmt.Errorf("stored at sequence %d, not %d", ack.Sequence, f.seq))
		}
		p.confirm(1)
		return nil
	case err := <-f.ack.Err():
		f.ack = nil
		return p.resolve(ctx, err)
	case <-ctx.Done():
		return fmt.Errorf("append to WAL stream: %w", ctx.Err())
	}
}

// confirm records the first n messages as stored.
func (p *pipe) confirm(n int) {
	for _, f := range p.q[:n] {
		if cap(f.msg.Data) == ChunkSize {
			p.free = append(p.free, f.msg.Data)
		}
	}
	p.a.lastSeq.Store(p.q[n-1].seq)
	p.q = p.q[n:]
}

// resolve learns from the stream which messages were stored after an
// unknown outcome (cause), and sends the others again. It fences the
// appender if the stream holds a message that is not ours.
func (p *pipe) resolve(ctx context.Context, cause error) error {
	p.a.resolved.Add(1)
	wait := 50 * time.Millisecond
	for {
		p.quiesce(ctx)
		rctx, cancel := context.WithTimeout(ctx, ackWait)
		stored, err := p.stored(rctx)
		cancel()
		if err == nil {
			if stored > 0 {
				p.confirm(stored)
			} else if !sleep(ctx, 10*time.Millisecond) { // nothing got through: do not spin
				return fmt.Errorf("append to WAL stream: %w (%v)", ctx.Err(), cause)
			}
			for _, f := range p.q {
				p.publish(f)
			}
			return nil
		}
		if errors.Is(err, ErrFenced) {
			p.a.fenced = fmt.Errorf("%w (the append after seq %d for epoch %d failed: %v)", err, p.a.lastSeq.Load(), p.a.epoch, cause)
			return p.a.fenced
		}
		if !sleep(ctx, wait) {
			return fmt.Errorf("append to WAL stream: %w (%v; reading the stream: %v)", ctx.Err(), cause, err)
		}
		wait = min(2*wait, time.Second)
	}
}

// quiesce waits until no message of the pipe awaits an acknowledgement,
// so that reading the stream sees where each of them ended.
func (p *pipe) quiesce(ctx context.Context) {
	for _, f := range p.q {
		if f.ack == nil {
			continue
		}
		select {
		case <-f.ack.Ok():
		case <-f.ack.Err():
		case <-ctx.Done():
			return
		}
		f.ack = nil
	}
}

// stored reads the stream after the last confirmed sequence: it returns
// how many of the pipe's messages are there, in order, or ErrFenced if
// another writer's message is.
func (p *pipe) stored(ctx context.Context) (int, error) {
	s, err := p.a.js.Stream(ctx, p.a.stream)
	if err != nil {
		return 0, fmt.Errorf("open WAL stream: %w", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("WAL stream info: %w", err)
	}
	confirmed, last := p.a.lastSeq.Load(), info.State.LastSeq
	if last < confirmed {
		// Stored messages do not vanish: this is a stale view (a server
		// that resumed after a freeze answered with the stream as it was
		// 40 s before, and the leader stepped down for nothing). Read
		// again, until the lease ends.
		return 0, fmt.Errorf("stale view of the WAL stream: its last sequence is %d, before our acknowledged %d", last, confirmed)
	}
	if last > confirmed+uint64(len(p.q)) {
		return 0, fmt.Errorf("%w: it holds %d messages after our seq %d, more than the %d we sent", ErrFenced, last-confirmed, confirmed, len(p.q))
	}
	n := 0
	for seq := confirmed + 1; seq <= last; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return 0, fmt.Errorf("%w: message %d is gone", ErrFenced, seq)
		}
		if err != nil {
			return 0, fmt.Errorf("read WAL message %d: %w", seq, err)
		}
		if got, want := m.Header.Get(jetstream.MsgIDHeader), p.q[n].msg.Header.Get(jetstream.MsgIDHeader); got != want {
			err := fmt.Errorf("%w: message %d is another writer's (epoch %s, node %q)", ErrFenced, seq, m.Header.Get(HdrEpoch), m.Header.Get(HdrNode))
			return 0, p.retract(ctx, s, seq+1, last, err)
		}
		n++
	}
	return n, nil
}

// retract deletes the pipe's messages stored between from and to, after
// another writer's message: each expects only the sequence before it (the
// message ID of the one before it too would be safer, but nats-server
// re-checks that header on every replica, where a snapshot catch-up
// leaves a stale last ID: the caught-up replica fails, and the stream
// loses its quorum at the next fault), so the pipelined messages after
// the one the foreign message displaced may have been stored after it.
// A passive that read one meanwhile finds it does not follow.
func (p *pipe) retract(ctx context.Context, s jetstream.Stream, from, to uint64, fenced error) error {
	ours := map[string]bool{}
	for _, f := range p.q {
		ours[f.msg.Header.Get(jetstream.MsgIDHeader)] = true
	}
	for seq := from; seq <= to; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err == nil && ours[m.Header.Get(jetstream.MsgIDHeader)] {
			err = s.DeleteMsg(ctx, seq)
		}
		if err != nil {
			return fmt.Errorf("%w; retracting our message %d after it: %v", fenced, seq, err)
		}
	}
	return fenced
}

// sleep waits for d; false if ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

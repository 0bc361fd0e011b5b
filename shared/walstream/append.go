package walstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Appender appends one epoch's changes to the WAL stream. Every append
// expects the stream's last sequence to be the one this appender wrote
// last; once an append is refused the appender stays fenced.
type Appender struct {
	js      jetstream.JetStream
	subject string
	epoch   uint64
	node    string
	lastSeq atomic.Uint64 // written by the appending goroutine, read by status
	end     atomic.Int64  // chain bytes appended (Meta.End of the last file)
	chain   uint64        // the chain appended to (Meta.Chain)
	fenced  error
}

// Open opens epoch on the stream: it refuses if the stream already holds a
// newer epoch, then appends the epoch marker with the stream's current last
// sequence as the expected one. The marker says that a full copy follows,
// for reason.
func Open(ctx context.Context, js jetstream.JetStream, cluster, node string, epoch uint64, reason string) (*Appender, error) {
	s, err := js.Stream(ctx, Stream(cluster))
	if err != nil {
		return nil, fmt.Errorf("open WAL stream: %w", err)
	}
	a := &Appender{js: js, subject: Subject(cluster), epoch: epoch, node: node}
	for attempt := 0; attempt < 5; attempt++ {
		last, newest, err := Last(ctx, s)
		if err != nil {
			return nil, err
		}
		if newest.Epoch > epoch {
			return nil, fmt.Errorf("%w: stream holds epoch %d, newer than %d", ErrFenced, newest.Epoch, epoch)
		}
		a.lastSeq.Store(last)
		err = a.publish(ctx, Meta{Kind: KindMarker, Epoch: epoch, Node: node, Reason: reason}, nil)
		if err == nil {
			a.chain = a.lastSeq.Load() // a full copy starts a chain
			return a, nil
		}
		if !errors.Is(err, ErrFenced) {
			return nil, err
		}
		a.fenced = nil // someone appended between Info and our marker: look again
	}
	return nil, fmt.Errorf("%w: could not open epoch %d: the stream keeps moving", ErrFenced, epoch)
}

// ErrBaseMoved means the stream moved on after the position a writer
// wanted to continue from: the chain cannot be continued from it.
var ErrBaseMoved = errors.New("the WAL stream moved past the base")

// Continue opens epoch on the stream continuing the chain from base: the
// marker names base and is appended only if the stream's last sequence is
// still tail (what the caller checked base against). The appender's files
// then continue from base.End chain bytes.
func Continue(ctx context.Context, js jetstream.JetStream, cluster, node string, epoch uint64, base Base, tail uint64) (*Appender, error) {
	s, err := js.Stream(ctx, Stream(cluster))
	if err != nil {
		return nil, fmt.Errorf("open WAL stream: %w", err)
	}
	last, newest, err := Last(ctx, s)
	if err != nil {
		return nil, err
	}
	if newest.Epoch > epoch {
		return nil, fmt.Errorf("%w: stream holds epoch %d, newer than %d", ErrFenced, newest.Epoch, epoch)
	}
	if last != tail {
		return nil, fmt.Errorf("%w: its last sequence is %d, not %d", ErrBaseMoved, last, tail)
	}
	a := &Appender{js: js, subject: Subject(cluster), epoch: epoch, node: node}
	a.lastSeq.Store(tail)
	a.end.Store(base.End)
	a.chain = base.Chain
	if err := a.publish(ctx, Meta{Kind: KindMarker, Epoch: epoch, Node: node, Base: &base}, nil); err != nil {
		if errors.Is(err, ErrFenced) {
			return nil, fmt.Errorf("%w: %w", ErrBaseMoved, err)
		}
		return nil, err
	}
	return a, nil
}

// ErrBadMessage means a WAL message was read but its header is invalid.
var ErrBadMessage = errors.New("malformed WAL message")

// At returns the header of the stream's message at seq.
func At(ctx context.Context, s jetstream.Stream, seq uint64) (Meta, error) {
	m, err := s.GetMsg(ctx, seq)
	if err != nil {
		return Meta{}, fmt.Errorf("read WAL message %d: %w", seq, err)
	}
	meta, err := ParseMeta(m.Header)
	if err != nil {
		return meta, fmt.Errorf("%w %d: %w", ErrBadMessage, seq, err)
	}
	return meta, nil
}

// Last returns the sequence and header of the stream's last message (0 and
// an empty Meta if the stream is empty).
func Last(ctx context.Context, s jetstream.Stream) (uint64, Meta, error) {
	m, err := s.GetLastMsgForSubject(ctx, s.CachedInfo().Config.Subjects[0])
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, Meta{}, nil
	}
	if err != nil {
		return 0, Meta{}, fmt.Errorf("read last WAL message: %w", err)
	}
	meta, err := ParseMeta(m.Header)
	if err != nil {
		return m.Sequence, meta, fmt.Errorf("last WAL message (seq %d): %w", m.Sequence, err)
	}
	return m.Sequence, meta, nil
}

// Epoch is the epoch this appender writes.
func (a *Appender) Epoch() uint64 { return a.epoch }

// LastSeq is the stream sequence of this appender's last append.
func (a *Appender) LastSeq() uint64 { return a.lastSeq.Load() }

// End is the chain bytes appended so far: the End of the last file.
func (a *Appender) End() int64 { return a.end.Load() }

// Chain is the chain appended to: the sequence of its full copy's marker.
func (a *Appender) Chain() uint64 { return a.chain }

// AppendLTX streams one LTX file of size bytes from r in chunks; m gives
// its TXID range, checksums and capture time.
func (a *Appender) AppendLTX(ctx context.Context, m Meta, r io.Reader, size int64) error {
	m.Kind, m.Epoch, m.Node = KindLTX, a.epoch, a.node
	m.End, m.Chain = a.end.Load()+size, a.chain
	buf := make([]byte, ChunkSize)
	for i := 0; ; i++ {
		n, err := io.ReadFull(r, buf)
		last := errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
		if err != nil && !last {
			return fmt.Errorf("read LTX %d-%d: %w", m.MinTXID, m.MaxTXID, err)
		}
		if last && n == 0 && i == 0 {
			return fmt.Errorf("LTX %d-%d is empty", m.MinTXID, m.MaxTXID)
		}
		// A file that ends exactly at a chunk boundary gets an empty last chunk.
		m.Chunk, m.Last = i, last
		if err := a.publish(ctx, m, buf[:n]); err != nil {
			return err
		}
		if last {
			a.end.Store(m.End)
			return nil
		}
	}
}

func (a *Appender) publish(ctx context.Context, m Meta, data []byte) error {
	if a.fenced != nil {
		return a.fenced
	}
	msg := &nats.Msg{Subject: a.subject, Header: m.Header(), Data: data}
	// The message ID makes a retry after a lost acknowledgement a duplicate
	// that JetStream answers with the original sequence, not a second append.
	last := a.lastSeq.Load()
	id := fmt.Sprintf("%d.%d.%s.%d.%d", a.epoch, last, m.Kind, m.MinTXID, m.Chunk)
	for {
		ack, err := a.js.PublishMsg(ctx, msg, jetstream.WithExpectLastSequence(last), jetstream.WithMsgID(id))
		if err == nil {
			a.lastSeq.Store(ack.Sequence)
			return nil
		}
		if isWrongLastSequence(err) {
			a.fenced = fmt.Errorf("%w: append after seq %d for epoch %d refused: %v", ErrFenced, last, a.epoch, err)
			return a.fenced
		}
		if ctx.Err() != nil {
			return fmt.Errorf("append to WAL stream: %w", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("append to WAL stream: %w", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

package walstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/superfly/ltx"
)

// Appender appends one epoch's changes to the WAL stream. Every append
// expects the stream's last sequence to be the one this appender wrote
// before it; once the stream holds another writer's message the appender
// stays fenced. An append whose outcome is unknown is resolved by reading
// the stream (see pipe).
type Appender struct {
	js      jetstream.JetStream
	pub     jetstream.JetStream // js's connection, with async publishes that time out
	stream  string
	subject string
	epoch   uint64
	node    string
	lastSeq atomic.Uint64 // written by the appending goroutine, read by status
	end     atomic.Int64  // chain bytes appended (Meta.End of the last file)
	chain   uint64        // the chain appended to (Meta.Chain)
	// resolved counts appends whose outcome was unknown and was learnt
	// by reading the stream.
	resolved atomic.Uint64
	fenced   error
	// yield, if set, is called before each chunk after a file's first:
	// a large file waits while it returns (see SetYield).
	yield func(context.Context) error
}

// SetYield makes a large file's chunks wait for yield before each is sent
// (after the first): the caller holds them back while something that
// shares the NATS servers must get through first (the lease's renewal).
// An error from yield ends the append.
func (a *Appender) SetYield(yield func(context.Context) error) { a.yield = yield }

// newAppender returns an appender of epoch after stream sequence last.
func newAppender(js jetstream.JetStream, cluster, node string, epoch, last uint64) (*Appender, error) {
	pub, err := jetstream.New(js.Conn(), jetstream.WithPublishAsyncTimeout(ackWait), jetstream.WithPublishAsyncMaxPending(2*Window))
	if err != nil {
		return nil, fmt.Errorf("open WAL stream publisher: %w", err)
	}
	a := &Appender{js: js, pub: pub, stream: Stream(cluster), subject: Subject(cluster), epoch: epoch, node: node}
	a.lastSeq.Store(last)
	return a, nil
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
	for attempt := 0; attempt < 5; attempt++ {
		last, newest, err := Last(ctx, s)
		if err != nil {
			return nil, err
		}
		if newest.Epoch > epoch {
			return nil, fmt.Errorf("%w: stream holds epoch %d, newer than %d", ErrFenced, newest.Epoch, epoch)
		}
		a, err := newAppender(js, cluster, node, epoch, last)
		if err != nil {
			return nil, err
		}
		err = a.marker(ctx, Meta{Kind: KindMarker, Epoch: epoch, Node: node, Reason: reason})
		if err == nil {
			a.chain = a.lastSeq.Load() // a full copy starts a chain
			return a, nil
		}
		if !errors.Is(err, ErrFenced) {
			return nil, err
		}
		// Someone appended between reading the stream and our marker: look again.
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
	a, err := newAppender(js, cluster, node, epoch, tail)
	if err != nil {
		return nil, err
	}
	a.end.Store(base.End)
	a.chain = base.Chain
	if err := a.marker(ctx, Meta{Kind: KindMarker, Epoch: epoch, Node: node, Base: &base}); err != nil {
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

// Resolved is how many appends had an unknown outcome (an error, a lost
// acknowledgement) that was resolved by reading the stream.
func (a *Appender) Resolved() uint64 { return a.resolved.Load() }

// Chain is the chain appended to: the sequence of its full copy's marker.
func (a *Appender) Chain() uint64 { return a.chain }

// marker appends an epoch marker.
func (a *Appender) marker(ctx context.Context, m Meta) error {
	p := &pipe{a: a}
	if err := p.send(ctx, m.Header(), nil, KindMarker); err != nil {
		return err
	}
	return p.flush(ctx)
}

// AppendLTX streams one LTX file of size bytes from r in chunks, with up to
// Window of them unacknowledged; m gives its TXID range, pre-checksum and
// capture time. post, called before the last chunk is sent, gives the
// checksum after the file (only the last chunk carries it), so that the
// caller may compute it while the file is being sent. It returns once
// every chunk is stored.
func (a *Appender) AppendLTX(ctx context.Context, m Meta, r io.Reader, size int64, post func() (ltx.Checksum, error)) error {
	m.Kind, m.Epoch, m.Node = KindLTX, a.epoch, a.node
	m.End, m.Chain = a.end.Load()+size, a.chain
	p := &pipe{a: a}
	for i := 0; ; i++ {
		buf := p.buffer()
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
		if i > 0 && a.yield != nil {
			if err := a.yield(ctx); err != nil {
				return fmt.Errorf("append LTX %d-%d: %w", m.MinTXID, m.MaxTXID, err)
			}
		}
		if last {
			if m.Post, err = post(); err != nil {
				return err
			}
		}
		if err := p.send(ctx, m.Header(), buf[:n], fmt.Sprintf("%s.%d.%d", KindLTX, m.MinTXID, i)); err != nil {
			return err
		}
		if last {
			break
		}
	}
	if err := p.flush(ctx); err != nil {
		return err
	}
	a.end.Store(m.End)
	return nil
}

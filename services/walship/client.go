package walship

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/benbjohnson/litestream"
	"github.com/superfly/ltx"
	"golang.org/x/sync/errgroup"

	"github.com/convex-cluster-manager/ccm/shared/replica"
	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

// streamClient is a litestream.ReplicaClient that appends each L0 LTX file
// to the WAL stream through a fenced Appender. Only level 0 exists remotely;
// it never restores, so reads report nothing.
type streamClient struct {
	app      *walstream.Appender
	onWrite  func(ltx.TXID, int64) // after each successful append
	sumsPath string
	barrier  func(context.Context, time.Time) error // nil: no storage files to wait for

	mu    sync.Mutex
	last  ltx.TXID // last TXID in the stream: the replica resumes after it
	pages replica.PageSums
	sums  *replica.SumsFile // nil until the first file is shipped
	log   *slog.Logger
	// fenced is set once an append was refused; read without mu, so that
	// the daemon's loop never waits for a large file's append.
	fenced atomic.Pointer[error]
	// refusing, once set, refuses every file after a TXID (refuseAfter).
	refusing atomic.Pointer[refusal]
}

// refusal is a TXID after which nothing is shipped, and why.
type refusal struct {
	after ltx.TXID
	why   error
}

// refuseAfter makes every later append of a file past TXID after fail with
// why: what Litestream captured after it cannot be trusted.
func (c *streamClient) refuseAfter(after ltx.TXID, why error) {
	c.refusing.Store(&refusal{after: after, why: why})
}

var _ litestream.ReplicaClient = (*streamClient)(nil)

// newStreamClient ships after TXID last, whose database pages has; last 0
// means the first file must be a full snapshot. Each shipped position is
// recorded in the page-sums file at sumsPath.
func newStreamClient(app *walstream.Appender, last ltx.TXID, pages replica.PageSums, sumsPath string, onWrite func(ltx.TXID, int64)) *streamClient {
	return &streamClient{app: app, last: last, pages: pages, sumsPath: sumsPath, onWrite: onWrite, log: slog.Default()}
}

func (c *streamClient) Type() string                                          { return "ccm-nats" }
func (c *streamClient) Init(context.Context) error                            { return nil }
func (c *streamClient) SetLogger(l *slog.Logger)                              { c.log = l }
func (c *streamClient) DeleteAll(context.Context) error                       { return nil }
func (c *streamClient) DeleteLTXFiles(context.Context, []*ltx.FileInfo) error { return nil }

// LTXFiles reports the last file in the stream, so that the replica
// resumes after it.
func (c *streamClient) LTXFiles(_ context.Context, level int, _ ltx.TXID, _ bool) (ltx.FileIterator, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if level != 0 || c.last == 0 {
		return ltx.NewFileInfoSliceIterator(nil), nil
	}
	return ltx.NewFileInfoSliceIterator([]*ltx.FileInfo{{Level: 0, MinTXID: c.last, MaxTXID: c.last}}), nil
}

func (c *streamClient) OpenLTXFile(context.Context, int, ltx.TXID, ltx.TXID, int64, int64) (io.ReadCloser, error) {
	return nil, os.ErrNotExist
}

// WriteLTXFile appends one LTX file. Once fenced, every later write fails.
func (c *streamClient) WriteLTXFile(ctx context.Context, level int, minTXID, maxTXID ltx.TXID, r io.Reader) (*ltx.FileInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.Fenced(); err != nil {
		return nil, err
	}
	if r := c.refusing.Load(); r != nil && maxTXID > r.after {
		return nil, fmt.Errorf("LTX %d-%d not shipped: %w", minTXID, maxTXID, r.why)
	}
	if level != 0 {
		return nil, fmt.Errorf("ccm ships level 0 only, got level %d", level)
	}
	if c.last != 0 && minTXID != c.last+1 {
		return nil, fmt.Errorf("LTX %d-%d does not follow TXID %d in the stream", minTXID, maxTXID, c.last)
	}
	ra, ok := r.(io.ReaderAt)
	sk, seeks := r.(io.Seeker)
	if !ok || !seeks {
		return nil, fmt.Errorf("LTX %d-%d: reader %T cannot read at offsets", minTXID, maxTXID, r)
	}
	size, err := sk.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, fmt.Errorf("LTX %d-%d: %w", minTXID, maxTXID, err)
	}
	var hdr ltx.Header
	b := make([]byte, ltx.HeaderSize)
	if _, err := ra.ReadAt(b, 0); err != nil {
		return nil, fmt.Errorf("read LTX %d-%d header: %w", minTXID, maxTXID, err)
	}
	if err := hdr.UnmarshalBinary(b); err != nil {
		return nil, fmt.Errorf("LTX %d-%d header: %w", minTXID, maxTXID, err)
	}
	// A backend writes a storage file before it commits the row naming
	// it: once the files written before the capture are published, the
	// rows may follow.
	if c.barrier != nil {
		start := time.Now()
		err := c.barrier(ctx, time.UnixMilli(hdr.Timestamp))
		if took := time.Since(start); took > slowStep {
			c.log.Warn("waiting for ccm-storage's barrier was slow: nothing later was shipped meanwhile", "txid", minTXID, "took", took.Round(time.Millisecond), "err", err)
		}
		if err != nil {
			return nil, fmt.Errorf("LTX %d-%d waits for the storage files written before it: %w", minTXID, maxTXID, err)
		}
	}
	meta := walstream.Meta{MinTXID: minTXID, MaxTXID: maxTXID, Captured: time.UnixMilli(hdr.Timestamp), Pre: c.pages.Checksum()}
	if hdr.IsSnapshot() {
		meta.Pre = 0
	}
	var (
		g    errgroup.Group
		undo func()
	)
	send, sendSize := io.ReaderAt(ra), size
	if c.last != 0 && c.recaptured(hdr, ra, size) {
		// Litestream captured every page (it could not follow the WAL):
		// ship only those that differ from what was shipped.
		delta, dsize, derr := c.delta(ra, size)
		if derr != nil {
			return nil, fmt.Errorf("LTX %d-%d: %w", minTXID, maxTXID, derr)
		}
		defer os.Remove(delta.Name())
		defer delta.Close()
		c.log.Info("Litestream captured the whole database: shipping only its changed pages",
			"txid", minTXID, "bytes", dsize, "captured_bytes", size)
		send, sendSize = delta, dsize
		_, undo, err = c.pages.Apply(io.NewSectionReader(ra, 0, size))
		if err != nil {
			return nil, fmt.Errorf("checksum LTX %d-%d: %w", minTXID, maxTXID, err)
		}
	} else {
		// The page checksums are computed while the file is being sent:
		// only its last chunk carries the checksum after it.
		g.Go(func() error {
			var err error
			_, undo, err = c.pages.ApplyLocal(io.NewSectionReader(ra, 0, size))
			return err
		})
	}
	post := func() (ltx.Checksum, error) {
		if err := g.Wait(); err != nil {
			return 0, fmt.Errorf("checksum LTX %d-%d: %w", minTXID, maxTXID, err)
		}
		return c.pages.Checksum(), nil
	}
	start, resolved := time.Now(), c.app.Resolved()
	err = c.app.AppendLTX(ctx, meta, io.NewSectionReader(send, 0, sendSize), sendSize, post)
	if took := time.Since(start); took > slowStep {
		c.log.Warn("appending to the WAL stream was slow: nothing later was shipped meanwhile", "txid", minTXID, "bytes", sendSize,
			"took", took.Round(time.Millisecond), "unknown_outcomes", c.app.Resolved()-resolved, "err", err)
	}
	if serr := g.Wait(); err == nil && serr != nil {
		err = fmt.Errorf("checksum LTX %d-%d: %w", minTXID, maxTXID, serr)
	}
	if err != nil {
		if undo != nil {
			undo()
		}
		if errors.Is(err, walstream.ErrFenced) {
			c.fenced.Store(&err)
		}
		return nil, err
	}
	meta.Post = c.pages.Checksum()
	c.last = maxTXID
	c.record(walstream.Base{Epoch: c.app.Epoch(), TXID: maxTXID, Checksum: meta.Post, Seq: c.app.LastSeq(), End: c.app.End(), Chain: c.app.Chain()})
	if c.onWrite != nil {
		c.onWrite(maxTXID, sendSize)
	}
	return &ltx.FileInfo{Level: 0, MinTXID: minTXID, MaxTXID: maxTXID, PreApplyChecksum: meta.Pre,
		PostApplyChecksum: meta.Post, Size: size, CreatedAt: time.UnixMilli(hdr.Timestamp)}, nil
}

// delta writes the changed pages of the file in ra beside the page-sums
// file and returns it open for reading, with its size.
func (c *streamClient) delta(ra io.ReaderAt, size int64) (*os.File, int64, error) {
	path := c.sumsPath + ".delta"
	n, err := c.writeDelta(path, ra, size)
	if err != nil {
		os.Remove(path)
		return nil, 0, fmt.Errorf("reduce a whole-database capture to its changes: %w", err)
	}
	f, err := os.Open(path)
	if err != nil {
		os.Remove(path)
		return nil, 0, err
	}
	return f, n, nil
}

// record keeps the page-sums file at the shipped position b. A failure
// costs only a full copy at the next start, so it is logged, not returned.
func (c *streamClient) record(b walstream.Base) {
	var err error
	if c.sums == nil {
		c.sums, err = replica.CreateSums(c.sumsPath, b, &c.pages)
	} else {
		err = c.sums.Update(b, &c.pages)
	}
	if err != nil {
		c.log.Warn("page sums not recorded: the next start ships a full copy", "err", err)
		if c.sums != nil {
			c.sums.Close()
			c.sums = nil
		}
		os.Remove(c.sumsPath)
	}
}

// Fenced returns the fencing error once an append was refused.
func (c *streamClient) Fenced() error {
	if err := c.fenced.Load(); err != nil {
		return *err
	}
	return nil
}

// close closes the page-sums file.
func (c *streamClient) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sums != nil {
		c.sums.Close()
		c.sums = nil
	}
}

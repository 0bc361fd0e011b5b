package walship

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/benbjohnson/litestream"
	"github.com/superfly/ltx"

	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

// streamClient is a litestream.ReplicaClient that appends each L0 LTX file
// to the WAL stream through a fenced Appender. Only level 0 exists remotely;
// it never restores, so reads report nothing.
type streamClient struct {
	app     *walstream.Appender
	onWrite func(ltx.TXID, int64) // after each successful append

	mu     sync.Mutex
	last   ltx.TXID
	pages  pageSums
	fenced error
	log    *slog.Logger
}

var _ litestream.ReplicaClient = (*streamClient)(nil)

func newStreamClient(app *walstream.Appender, onWrite func(ltx.TXID, int64)) *streamClient {
	return &streamClient{app: app, onWrite: onWrite, log: slog.Default()}
}

func (c *streamClient) Type() string                    { return "ccm-nats" }
func (c *streamClient) Init(context.Context) error      { return nil }
func (c *streamClient) SetLogger(l *slog.Logger)        { c.log = l }
func (c *streamClient) DeleteAll(context.Context) error { return nil }

func (c *streamClient) DeleteLTXFiles(context.Context, []*ltx.FileInfo) error { return nil }

// LTXFiles reports the last file shipped in this epoch, so that the replica
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
	if c.fenced != nil {
		return nil, c.fenced
	}
	if level != 0 {
		return nil, fmt.Errorf("ccm ships level 0 only, got level %d", level)
	}
	rs, ok := r.(io.ReadSeeker)
	if !ok {
		return nil, fmt.Errorf("LTX %d-%d: reader %T cannot seek", minTXID, maxTXID, r)
	}
	next, hdr, err := c.pages.next(rs)
	if err != nil {
		return nil, fmt.Errorf("checksum LTX %d-%d: %w", minTXID, maxTXID, err)
	}
	if _, err := rs.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	cr := &countingReader{r: rs}
	meta := walstream.Meta{MinTXID: minTXID, MaxTXID: maxTXID, Captured: time.UnixMilli(hdr.Timestamp),
		Pre: c.pages.sum, Post: next.sum}
	if hdr.IsSnapshot() {
		meta.Pre = 0
	}
	if err := c.app.AppendLTX(ctx, meta, cr); err != nil {
		if errors.Is(err, walstream.ErrFenced) {
			c.fenced = err
		}
		return nil, err
	}
	c.last, c.pages = maxTXID, next
	if c.onWrite != nil {
		c.onWrite(maxTXID, cr.n)
	}
	return &ltx.FileInfo{Level: 0, MinTXID: minTXID, MaxTXID: maxTXID, PreApplyChecksum: meta.Pre,
		PostApplyChecksum: meta.Post, Size: cr.n, CreatedAt: time.UnixMilli(hdr.Timestamp)}, nil
}

// Fenced returns the fencing error once an append was refused.
func (c *streamClient) Fenced() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fenced
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

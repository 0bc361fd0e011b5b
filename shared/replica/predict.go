package replica

import (
	"bufio"
	"errors"
	"io"

	"github.com/superfly/ltx"
	"golang.org/x/sync/errgroup"
)

// errAborted ends the prediction of a file that will not be applied.
var errAborted = errors.New("file abandoned before its last chunk")

// prediction moves a shadow's page sums, while the chunks of a file
// arrive, to what they will be once the file is applied (Shadow.Predict on
// the stream of chunks): the last chunk then waits only for its own
// pages, not for a second reading of the whole file.
type prediction struct {
	w *io.PipeWriter
	g errgroup.Group

	hdr  ltx.Header
	post ltx.Checksum
	undo func()
	err  error
}

// predict starts predicting the file whose chunks are passed to write.
func predict(sh *Shadow) *prediction {
	r, w := io.Pipe()
	p := &prediction{w: w}
	p.g.Go(func() error {
		p.hdr, p.post, p.undo, p.err = sh.Predict(bufio.NewReaderSize(r, 64<<10))
		// The rest of the stream (after an error) is read and dropped, so
		// that write never blocks.
		_, err := io.Copy(io.Discard, r)
		r.CloseWithError(err)
		return nil
	})
	return p
}

// write passes the next chunk of the file.
func (p *prediction) write(b []byte) {
	p.w.Write(b) // fails only once the reader is closed: after the whole stream
}

// finish waits for the prediction of a complete file: Shadow.Predict's
// results.
func (p *prediction) finish() (ltx.Header, ltx.Checksum, func(), error) {
	p.w.Close()
	p.g.Wait()
	return p.hdr, p.post, p.undo, p.err
}

// abort ends a prediction whose file will not be applied; the page sums
// return to the shadow's content.
func (p *prediction) abort() {
	p.w.CloseWithError(errAborted)
	p.g.Wait()
	if p.err == nil && p.undo != nil {
		p.undo()
	}
}

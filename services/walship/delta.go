package walship

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/superfly/ltx"

	"github.com/convex-cluster-manager/ccm/shared/fsutil"
	"github.com/convex-cluster-manager/ccm/shared/replica"
)

// deltaMinPages is the smallest database whose whole-database captures
// are reduced to their changed pages.
const deltaMinPages = 256

// deltaSamples is how many pages of a whole-database capture are
// compared with the shipped state before reducing it to its changes.
const deltaSamples = 64

// indexEntry is a page's frame in an LTX file, from its page index.
type indexEntry struct {
	pgno         uint32
	offset, size int64
}

// pageIndex reads the page index of an LTX file of size bytes (the index,
// its size and the trailer end the file): the number of pages and up to
// samples of them, spread evenly over the index.
func pageIndex(ra io.ReaderAt, size int64, samples int) (int, []indexEntry, error) {
	var b [8]byte
	end := size - ltx.TrailerSize - 8
	if _, err := ra.ReadAt(b[:], end); err != nil {
		return 0, nil, fmt.Errorf("read page index size: %w", err)
	}
	n := int64(binary.BigEndian.Uint64(b[:]))
	if n <= 0 || n > end-ltx.HeaderSize {
		return 0, nil, fmt.Errorf("page index size %d out of range", n)
	}
	// An entry takes at least 3 bytes: every k-th of them is sampled.
	every := max(1, int(n/3)/samples)
	var picked []indexEntry
	r := bufio.NewReader(io.NewSectionReader(ra, end-n, n))
	pages := 0
	for {
		var e [3]uint64
		for i := range e {
			v, err := binary.ReadUvarint(r)
			if err != nil {
				return 0, nil, fmt.Errorf("read page index: %w", err)
			}
			if e[i] = v; i == 0 && v == 0 {
				return pages, picked, nil
			}
		}
		if pages%every == 0 && len(picked) < samples {
			picked = append(picked, indexEntry{pgno: uint32(e[0]), offset: int64(e[1]), size: int64(e[2])})
		}
		pages++
	}
}

// recaptured reports whether the LTX file is a capture of the whole
// database of which most pages were shipped already: Litestream captures
// every page when it cannot follow the WAL (its header reset while walship
// was down). A large transaction that rewrote most pages also holds
// (nearly) all of them, but few match what was shipped: it is sent as it is.
func (c *streamClient) recaptured(hdr ltx.Header, ra io.ReaderAt, size int64) bool {
	if hdr.IsSnapshot() || hdr.Commit < deltaMinPages {
		return false
	}
	n, samples, err := pageIndex(ra, size, deltaSamples)
	if err != nil || uint64(n)*10 < uint64(hdr.Commit)*9 {
		return false
	}
	same := 0
	frame := make([]byte, 0, 2*hdr.PageSize)
	for _, e := range samples {
		if e.size <= 0 || e.size > int64(cap(frame)) {
			return false
		}
		frame = frame[:e.size]
		if _, err := ra.ReadAt(frame, e.offset); err != nil {
			return false
		}
		ph, data, err := ltx.DecodePageData(frame)
		if err != nil || ph.Pgno != e.pgno || len(data) != int(hdr.PageSize) {
			return false
		}
		if ltx.ChecksumPage(e.pgno, data) == c.pages.Page(e.pgno) {
			same++
		}
	}
	return same*2 >= len(samples)
}

// writeDelta writes to path the LTX file that holds only the pages of the
// file in ra whose checksum differs from pages (the shipped state), with
// the same header: applied after the shipped state it gives the same
// database. It returns the new file's size.
func (c *streamClient) writeDelta(path string, ra io.ReaderAt, size int64) (int64, error) {
	lr, err := replica.NewLTXReader(io.NewSectionReader(ra, 0, size), true)
	if err != nil {
		return 0, err
	}
	hdr := lr.Header()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, fsutil.DataFile)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<20)
	enc, err := ltx.NewEncoder(w)
	if err != nil {
		return 0, err
	}
	if err := enc.EncodeHeader(hdr); err != nil {
		return 0, fmt.Errorf("encode LTX header: %w", err)
	}
	data := make([]byte, hdr.PageSize)
	h := ltx.NewHasher()
	for {
		pgno, err := lr.Next(data)
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return 0, err
		}
		if ltx.ChecksumPageWithHasher(h, pgno, data) == c.pages.Page(pgno) {
			continue
		}
		if err := enc.EncodePage(ltx.PageHeader{Pgno: pgno}, data); err != nil {
			return 0, fmt.Errorf("encode LTX page %d: %w", pgno, err)
		}
	}
	if _, err := lr.Close(); err != nil {
		return 0, err
	}
	if err := enc.Close(); err != nil {
		return 0, fmt.Errorf("close delta LTX: %w", err)
	}
	if err := w.Flush(); err != nil {
		return 0, err
	}
	return f.Seek(0, io.SeekEnd)
}

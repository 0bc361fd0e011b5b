package walship

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/superfly/ltx"
)

// deltaMinPages is the smallest database whose whole-database captures
// are reduced to their changed pages.
const deltaMinPages = 256

// pagesIn counts the pages of an LTX file of size bytes from its page
// index (the index, its size and the trailer end the file).
func pagesIn(ra io.ReaderAt, size int64) (int, error) {
	var b [8]byte
	end := size - ltx.TrailerSize - 8
	if _, err := ra.ReadAt(b[:], end); err != nil {
		return 0, fmt.Errorf("read page index size: %w", err)
	}
	n := int64(binary.BigEndian.Uint64(b[:]))
	if n <= 0 || n > end-ltx.HeaderSize {
		return 0, fmt.Errorf("page index size %d out of range", n)
	}
	r := bufio.NewReader(io.NewSectionReader(ra, end-n, n))
	pages := 0
	for {
		pgno, err := binary.ReadUvarint(r)
		if err != nil {
			return 0, fmt.Errorf("read page index: %w", err)
		}
		if pgno == 0 {
			return pages, nil
		}
		for range 2 { // offset and size
			if _, err := binary.ReadUvarint(r); err != nil {
				return 0, fmt.Errorf("read page index: %w", err)
			}
		}
		pages++
	}
}

// wholeDatabase reports whether the LTX file holds (nearly) every page of
// the database: Litestream captures the whole database when it cannot
// follow the WAL (its header reset while walship was down).
func wholeDatabase(hdr ltx.Header, ra io.ReaderAt, size int64) bool {
	if hdr.IsSnapshot() || hdr.Commit < deltaMinPages {
		return false
	}
	n, err := pagesIn(ra, size)
	return err == nil && uint64(n)*10 >= uint64(hdr.Commit)*9
}

// writeDelta writes to path the LTX file that holds only the pages of the
// file in ra whose checksum differs from pages (the shipped state), with
// the same header: applied after the shipped state it gives the same
// database. It returns the new file's size.
func (c *streamClient) writeDelta(path string, ra io.ReaderAt, size int64) (int64, error) {
	dec := ltx.NewDecoder(bufio.NewReaderSize(io.NewSectionReader(ra, 0, size), 1<<20))
	if err := dec.DecodeHeader(); err != nil {
		return 0, fmt.Errorf("decode LTX header: %w", err)
	}
	hdr := dec.Header()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o640)
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
		var ph ltx.PageHeader
		if err := dec.DecodePage(&ph, data); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return 0, fmt.Errorf("decode LTX page: %w", err)
		}
		if ltx.ChecksumPageWithHasher(h, ph.Pgno, data) == c.pages.Page(ph.Pgno) {
			continue
		}
		if err := enc.EncodePage(ph, data); err != nil {
			return 0, fmt.Errorf("encode LTX page %d: %w", ph.Pgno, err)
		}
	}
	if err := dec.Close(); err != nil {
		return 0, fmt.Errorf("LTX trailer: %w", err)
	}
	if err := enc.Close(); err != nil {
		return 0, fmt.Errorf("close delta LTX: %w", err)
	}
	if err := w.Flush(); err != nil {
		return 0, err
	}
	return f.Seek(0, io.SeekEnd)
}

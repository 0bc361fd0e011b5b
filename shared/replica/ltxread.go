package replica

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc64"
	"io"

	"github.com/pierrec/lz4/v4"
	"github.com/superfly/ltx"
)

// LTXReader reads the pages of an LTX file in one pass, with no
// allocation per page. Unlike ltx.Decoder it does not build the file's
// page index (a map of every page: 28 MiB for a 1 GiB file), which ccm
// never uses, and it checks the file checksum only when asked to: a file
// verified once need not be hashed again.
type LTXReader struct {
	r    *bufio.Reader
	hash hash.Hash64 // nil: the file checksum is not checked
	hdr  ltx.Header
	comp []byte
	done bool // the end of the pages was read
}

// crc64ISO is the table of LTX file checksums.
var crc64ISO = crc64.MakeTable(crc64.ISO)

// NewLTXReader reads the header of the LTX file in r; verify checks the
// file checksum at Close.
func NewLTXReader(r io.Reader, verify bool) (*LTXReader, error) {
	lr := &LTXReader{r: bufio.NewReaderSize(r, 1<<20)}
	if verify {
		lr.hash = crc64.New(crc64ISO)
	}
	b := make([]byte, ltx.HeaderSize)
	if err := lr.read(b); err != nil {
		return nil, fmt.Errorf("read LTX header: %w", err)
	}
	if err := lr.hdr.UnmarshalBinary(b); err != nil {
		return nil, fmt.Errorf("LTX header: %w", err)
	}
	if err := lr.hdr.Validate(); err != nil {
		return nil, fmt.Errorf("LTX header: %w", err)
	}
	lr.comp = make([]byte, lz4.CompressBlockBound(int(lr.hdr.PageSize)))
	return lr, nil
}

// Header is the file's header.
func (lr *LTXReader) Header() ltx.Header { return lr.hdr }

// read fills b from the file, hashing it.
func (lr *LTXReader) read(b []byte) error {
	if _, err := io.ReadFull(lr.r, b); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	if lr.hash != nil {
		lr.hash.Write(b)
	}
	return nil
}

// Next reads the next page into data (PageSize bytes) and returns its
// number, or io.EOF after the last page.
func (lr *LTXReader) Next(data []byte) (uint32, error) {
	if lr.done {
		return 0, io.EOF
	}
	var b [ltx.PageHeaderSize + 4]byte
	if err := lr.read(b[:ltx.PageHeaderSize]); err != nil {
		return 0, fmt.Errorf("read LTX page header: %w", err)
	}
	var ph ltx.PageHeader
	if err := ph.UnmarshalBinary(b[:]); err != nil {
		return 0, fmt.Errorf("LTX page header: %w", err)
	}
	if ph.IsZero() {
		lr.done = true
		return 0, io.EOF
	}
	if err := ph.Validate(); err != nil {
		return 0, fmt.Errorf("LTX page header: %w", err)
	}
	if ph.Flags&ltx.PageHeaderFlagSize == 0 {
		return 0, fmt.Errorf("LTX page %d: frame format of LTX before v0.5 (flags %#x) is not supported", ph.Pgno, ph.Flags)
	}
	if err := lr.read(b[ltx.PageHeaderSize:]); err != nil {
		return 0, fmt.Errorf("read LTX page %d size: %w", ph.Pgno, err)
	}
	n := binary.BigEndian.Uint32(b[ltx.PageHeaderSize:])
	if n == 0 || int(n) > len(lr.comp) {
		return 0, fmt.Errorf("LTX page %d: compressed size %d out of range", ph.Pgno, n)
	}
	// The compressed bytes are not part of the file checksum.
	if _, err := io.ReadFull(lr.r, lr.comp[:n]); err != nil {
		return 0, fmt.Errorf("read LTX page %d: %w", ph.Pgno, err)
	}
	if len(data) != int(lr.hdr.PageSize) {
		return 0, fmt.Errorf("page buffer of %d bytes for %d-byte pages", len(data), lr.hdr.PageSize)
	}
	if k, err := lz4.UncompressBlock(lr.comp[:n], data); err != nil || k != len(data) {
		return 0, fmt.Errorf("LTX page %d: decompress: %d bytes, %v", ph.Pgno, k, err)
	}
	if lr.hash != nil {
		lr.hash.Write(data)
	}
	return ph.Pgno, nil
}

// Close reads the rest of the file (page index and trailer) and, if asked
// to, checks the file checksum. It returns the trailer.
func (lr *LTXReader) Close() (ltx.Trailer, error) {
	var t ltx.Trailer
	if !lr.done {
		return t, errors.New("LTX file closed before its last page")
	}
	// Everything but the file checksum (the last 8 bytes) is hashed.
	var tail [ltx.TrailerSize]byte
	have := 0
	buf := make([]byte, 64<<10)
	for {
		n, err := lr.r.Read(buf)
		if n > 0 {
			all := append(tail[:have:have], buf[:n]...)
			keep := min(len(all), ltx.TrailerSize)
			if lr.hash != nil {
				lr.hash.Write(all[:len(all)-keep])
			}
			have = copy(tail[:], all[len(all)-keep:])
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return t, fmt.Errorf("read LTX page index: %w", err)
		}
	}
	if have < ltx.TrailerSize {
		return t, fmt.Errorf("LTX trailer: %w", io.ErrUnexpectedEOF)
	}
	if err := t.UnmarshalBinary(tail[:]); err != nil {
		return t, err
	}
	if lr.hash != nil {
		lr.hash.Write(tail[:ltx.ChecksumSize])
		if sum := ltx.ChecksumFlag | ltx.Checksum(lr.hash.Sum64()); sum != t.FileChecksum {
			return t, fmt.Errorf("%w: file checksum %s, the trailer says %s", ltx.ErrChecksumMismatch, sum, t.FileChecksum)
		}
	}
	return t, nil
}

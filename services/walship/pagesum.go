package walship

import (
	"errors"
	"fmt"
	"io"

	"github.com/superfly/ltx"
)

// pageSums keeps the LTX page checksum of every page of the leader's
// database, so that each shipped file can carry the database checksum
// before and after it. Litestream writes its LTX files without these
// (HeaderFlagNoChecksum); passives need them to prove that a file chains
// onto their copy. It costs 8 bytes per page (2 MiB per GiB at 4 KiB pages).
type pageSums struct {
	sums []ltx.Checksum // index pgno-1
	sum  ltx.Checksum
}

// next decodes an LTX file and returns the table and database checksum
// after it, leaving p unchanged. The first file must be a snapshot.
func (p *pageSums) next(r io.Reader) (pageSums, ltx.Header, error) {
	dec := ltx.NewDecoder(r)
	if err := dec.DecodeHeader(); err != nil {
		return pageSums{}, ltx.Header{}, fmt.Errorf("decode LTX header: %w", err)
	}
	hdr := dec.Header()
	var n pageSums
	switch {
	case hdr.IsSnapshot():
		n.sums = make([]ltx.Checksum, hdr.Commit)
	case p.sums == nil:
		return pageSums{}, hdr, fmt.Errorf("LTX %d-%d is not a snapshot, and no snapshot was seen before it", hdr.MinTXID, hdr.MaxTXID)
	default:
		n.sums = make([]ltx.Checksum, max(int(hdr.Commit), len(p.sums)))
		copy(n.sums, p.sums)
	}
	data := make([]byte, hdr.PageSize)
	h := ltx.NewHasher()
	for {
		var ph ltx.PageHeader
		if err := dec.DecodePage(&ph, data); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return pageSums{}, hdr, fmt.Errorf("decode LTX page: %w", err)
		}
		if int(ph.Pgno) > len(n.sums) {
			return pageSums{}, hdr, fmt.Errorf("LTX page %d beyond commit size %d", ph.Pgno, hdr.Commit)
		}
		n.sums[ph.Pgno-1] = ltx.ChecksumPageWithHasher(h, ph.Pgno, data)
	}
	if err := dec.Close(); err != nil {
		return pageSums{}, hdr, fmt.Errorf("LTX trailer: %w", err)
	}
	n.sums = n.sums[:hdr.Commit]
	for _, c := range n.sums {
		n.sum = ltx.ChecksumFlag | (n.sum ^ c)
	}
	return n, hdr, nil
}

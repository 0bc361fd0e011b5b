package replica

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/superfly/ltx"

	"github.com/convex-cluster-manager/ccm/shared/fsutil"
	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

// The page-sums file beside a database records the PageSums of the
// database at a position of the WAL chain (its base): ccm-walapply writes
// it for the shadow it hands over on promotion, ccm-walship keeps it for
// the database it ships. A new or restarted ccm-walship continues the
// chain from it instead of shipping a full copy.
//
// Layout: a 72-byte header (magic, epoch, TXID, checksum, stream sequence,
// page size, pages, chain bytes, source, chain), then 8 bytes per page,
// big-endian.
const (
	sumsMagic  = "CCMPSUM1"
	sumsHeader = 72
)

// SumsPath is the page-sums file of the database at dbPath.
func SumsPath(dbPath string) string { return dbPath + ".ccm-pagesums" }

// Sources of a page-sums file.
const (
	// SumsHandover: written by ccm-walapply for the drained shadow it
	// hands over; the shadow was verified page by page as it was applied.
	SumsHandover byte = 1
	// SumsShipped: kept by ccm-walship as it ships; the database may have
	// moved on since (committed but unshipped changes), so a new epoch
	// checks the file before continuing from it.
	SumsShipped byte = 2
)

func encodeSumsHeader(b walstream.Base, p *PageSums, source byte) []byte {
	h := make([]byte, sumsHeader)
	copy(h, sumsMagic)
	binary.BigEndian.PutUint64(h[8:], b.Epoch)
	binary.BigEndian.PutUint64(h[16:], uint64(b.TXID))
	binary.BigEndian.PutUint64(h[24:], uint64(b.Checksum))
	binary.BigEndian.PutUint64(h[32:], b.Seq)
	binary.BigEndian.PutUint32(h[40:], p.pageSize)
	binary.BigEndian.PutUint32(h[44:], p.Pages())
	binary.BigEndian.PutUint64(h[48:], uint64(b.End))
	h[56] = source
	binary.BigEndian.PutUint64(h[64:], b.Chain)
	return h
}

// WriteSums writes the page-sums file at path for p at base b, whole
// (temporary file, fsync, rename).
func WriteSums(path string, b walstream.Base, p *PageSums, source byte) error {
	buf := make([]byte, sumsHeader+8*len(p.sums))
	copy(buf, encodeSumsHeader(b, p, source))
	for i, c := range p.sums {
		binary.BigEndian.PutUint64(buf[sumsHeader+8*i:], uint64(c))
	}
	if err := fsutil.WriteFileSync(path, buf, 0o640); err != nil {
		return fmt.Errorf("write page sums: %w", err)
	}
	return nil
}

// ErrNoSums means there is no usable page-sums file.
var ErrNoSums = errors.New("no page sums")

// Sums is a page-sums file read back.
type Sums struct {
	Base   walstream.Base
	Pages  PageSums
	Source byte // SumsHandover or SumsShipped
}

// ReadSums reads the page-sums file at path and checks that its pages add
// up to the base's checksum.
func ReadSums(path string) (Sums, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Sums{}, ErrNoSums
	}
	if err != nil {
		return Sums{}, fmt.Errorf("read page sums: %w", err)
	}
	if len(b) < sumsHeader || string(b[:8]) != sumsMagic {
		return Sums{}, fmt.Errorf("%w: %s is not a page-sums file", ErrNoSums, path)
	}
	base := walstream.Base{
		Epoch:    binary.BigEndian.Uint64(b[8:]),
		TXID:     ltx.TXID(binary.BigEndian.Uint64(b[16:])),
		Checksum: ltx.Checksum(binary.BigEndian.Uint64(b[24:])),
		Seq:      binary.BigEndian.Uint64(b[32:]),
		End:      int64(binary.BigEndian.Uint64(b[48:])),
		Chain:    binary.BigEndian.Uint64(b[64:]),
	}
	p := PageSums{pageSize: binary.BigEndian.Uint32(b[40:])}
	pages := int(binary.BigEndian.Uint32(b[44:]))
	if len(b) != sumsHeader+8*pages {
		return Sums{}, fmt.Errorf("%w: %s holds %d bytes, not the %d pages it announces", ErrNoSums, path, len(b), pages)
	}
	p.sums = make([]ltx.Checksum, pages)
	for i := range p.sums {
		c := ltx.Checksum(binary.BigEndian.Uint64(b[sumsHeader+8*i:]))
		p.sums[i] = c
		p.sum = ltx.ChecksumFlag | (p.sum ^ c)
	}
	if p.sum != base.Checksum {
		return Sums{}, fmt.Errorf("%w: %s adds up to %s, its header says %s", ErrNoSums, path, p.sum, base.Checksum)
	}
	return Sums{Base: base, Pages: p, Source: b[56]}, nil
}

// SumsFile keeps a page-sums file up to date as the database changes,
// writing only the pages that changed and then the header.
type SumsFile struct {
	f *os.File
}

// CreateSums writes the page-sums file at path whole and opens it for
// updates.
func CreateSums(path string, b walstream.Base, p *PageSums) (*SumsFile, error) {
	if err := WriteSums(path, b, p, SumsShipped); err != nil {
		return nil, err
	}
	p.takeDirty()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open page sums: %w", err)
	}
	return &SumsFile{f: f}, nil
}

// Update records p at base b: the changed pages, the size, then the
// header, so that a torn update never adds up to its header's checksum.
// It does not sync: ReadSums finds a file that lost writes wanting.
func (s *SumsFile) Update(b walstream.Base, p *PageSums) error {
	var e [8]byte
	for _, pgno := range p.takeDirty() {
		if pgno > p.Pages() {
			continue
		}
		binary.BigEndian.PutUint64(e[:], uint64(p.sums[pgno-1]))
		if _, err := s.f.WriteAt(e[:], sumsHeader+8*int64(pgno-1)); err != nil {
			return fmt.Errorf("update page sums: %w", err)
		}
	}
	if err := s.f.Truncate(sumsHeader + 8*int64(p.Pages())); err != nil {
		return fmt.Errorf("update page sums: %w", err)
	}
	if _, err := s.f.WriteAt(encodeSumsHeader(b, p, SumsShipped), 0); err != nil {
		return fmt.Errorf("update page sums: %w", err)
	}
	return nil
}

// Close closes the file.
func (s *SumsFile) Close() error { return s.f.Close() }

var _ io.Closer = (*SumsFile)(nil)

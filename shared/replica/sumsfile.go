package replica

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc64"
	"io"
	"io/fs"
	"os"
	"slices"

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

// sumsLog is the redo log beside a page-sums file: each update is written
// there whole (changed entries and the new header, with a checksum) before
// the file itself is touched, so that an update cut short by a kill is
// finished on the next read instead of leaving a file that adds up to
// nothing.
func sumsLog(path string) string { return path + ".log" }

// WriteSums writes the page-sums file at path for p at base b, whole
// (temporary file, fsync, rename), and drops any redo log of an older one.
func WriteSums(path string, b walstream.Base, p *PageSums, source byte) error {
	buf := make([]byte, sumsHeader+8*len(p.sums))
	copy(buf, encodeSumsHeader(b, p, source))
	for i, c := range p.sums {
		binary.BigEndian.PutUint64(buf[sumsHeader+8*i:], uint64(c))
	}
	if err := os.Remove(sumsLog(path)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("write page sums: %w", err)
	}
	if err := fsutil.WriteFileSync(path, buf, fsutil.DataFile); err != nil {
		return fmt.Errorf("write page sums: %w", err)
	}
	return nil
}

// MoveSums moves the page-sums file of the database at from to the
// database at to (whose own, if any, describes a database set aside).
func MoveSums(from, to string) error {
	for _, p := range []string{sumsLog(SumsPath(to)), SumsPath(to)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	err := os.Rename(SumsPath(from), SumsPath(to))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// ErrNoSums means there is no usable page-sums file.
var ErrNoSums = errors.New("no page sums")

// Sums is a page-sums file read back.
type Sums struct {
	Base   walstream.Base
	Pages  PageSums
	Source byte // SumsHandover or SumsShipped
}

func decodeSumsHeader(h []byte) (walstream.Base, uint32, uint32, byte) {
	return walstream.Base{
		Epoch:    binary.BigEndian.Uint64(h[8:]),
		TXID:     ltx.TXID(binary.BigEndian.Uint64(h[16:])),
		Checksum: ltx.Checksum(binary.BigEndian.Uint64(h[24:])),
		Seq:      binary.BigEndian.Uint64(h[32:]),
		End:      int64(binary.BigEndian.Uint64(h[48:])),
		Chain:    binary.BigEndian.Uint64(h[64:]),
	}, binary.BigEndian.Uint32(h[40:]), binary.BigEndian.Uint32(h[44:]), h[56]
}

// ReadSums reads the page-sums file at path, finishes an update its redo
// log holds, and checks that its pages add up to the base's checksum.
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
	base, pageSize, pages, source := decodeSumsHeader(b)
	sums := make([]ltx.Checksum, (len(b)-sumsHeader)/8)
	for i := range sums {
		sums[i] = ltx.Checksum(binary.BigEndian.Uint64(b[sumsHeader+8*i:]))
	}
	if rec, ok := readSumsLog(sumsLog(path)); ok {
		base, pageSize, pages, source = decodeSumsHeader(rec.header)
		for len(sums) < int(pages) {
			sums = append(sums, 0)
		}
		for _, e := range rec.entries {
			if e.pgno >= 1 && int(e.pgno) <= len(sums) {
				sums[e.pgno-1] = e.sum
			}
		}
	}
	if len(sums) < int(pages) {
		return Sums{}, fmt.Errorf("%w: %s holds %d pages, not the %d it announces", ErrNoSums, path, len(sums), pages)
	}
	p := PageSums{pageSize: pageSize, sums: sums[:pages]}
	for _, c := range p.sums {
		p.sum = ltx.ChecksumFlag | (p.sum ^ c)
	}
	if p.sum != base.Checksum {
		return Sums{}, fmt.Errorf("%w: %s adds up to %s, its header says %s", ErrNoSums, path, p.sum, base.Checksum)
	}
	return Sums{Base: base, Pages: p, Source: source}, nil
}

// Redo log records: magic, the new header, the number of entries, the
// entries (page number, checksum), and a CRC-64 of all that.
const logMagic = "CCMPLOG1"

type logEntry struct {
	pgno uint32
	sum  ltx.Checksum
}

type logRecord struct {
	header  []byte
	entries []logEntry
}

var crcTable = crc64.MakeTable(crc64.ISO)

func encodeSumsLog(header []byte, entries []logEntry) []byte {
	buf := make([]byte, 0, 8+sumsHeader+4+12*len(entries)+8)
	buf = append(buf, logMagic...)
	buf = append(buf, header...)
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(entries)))
	for _, e := range entries {
		buf = binary.BigEndian.AppendUint32(buf, e.pgno)
		buf = binary.BigEndian.AppendUint64(buf, uint64(e.sum))
	}
	return binary.BigEndian.AppendUint64(buf, crc64.Checksum(buf, crcTable))
}

// readSumsLog returns the redo log's record if it is whole.
func readSumsLog(path string) (logRecord, bool) {
	b, err := os.ReadFile(path)
	if err != nil || len(b) < 8+sumsHeader+4+8 || string(b[:8]) != logMagic {
		return logRecord{}, false
	}
	body, sum := b[:len(b)-8], binary.BigEndian.Uint64(b[len(b)-8:])
	if crc64.Checksum(body, crcTable) != sum {
		return logRecord{}, false
	}
	n := int(binary.BigEndian.Uint32(body[8+sumsHeader:]))
	entries := body[8+sumsHeader+4:]
	if len(entries) != 12*n {
		return logRecord{}, false
	}
	rec := logRecord{header: body[8 : 8+sumsHeader], entries: make([]logEntry, n)}
	for i := range rec.entries {
		rec.entries[i] = logEntry{binary.BigEndian.Uint32(entries[12*i:]), ltx.Checksum(binary.BigEndian.Uint64(entries[12*i+4:]))}
	}
	return rec, true
}

// SumsFile keeps a page-sums file up to date as the database changes.
type SumsFile struct {
	f, log *os.File
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
	log, err := os.OpenFile(sumsLog(path), os.O_RDWR|os.O_CREATE|os.O_TRUNC, fsutil.DataFile)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open page sums: %w", err)
	}
	return &SumsFile{f: f, log: log}, nil
}

// Update records p at base b: first the redo log (the changed entries and
// the new header), then the changed entries, the size and the header of
// the file itself. It does not sync: a kill loses nothing (the page cache
// survives it), and ReadSums finds a file that lost writes in a crash of
// the machine wanting.
func (s *SumsFile) Update(b walstream.Base, p *PageSums) error {
	dirty := p.takeDirty()
	slices.Sort(dirty)
	dirty = slices.Compact(dirty)
	entries := make([]logEntry, 0, len(dirty))
	for _, pgno := range dirty {
		if pgno <= p.Pages() {
			entries = append(entries, logEntry{pgno, p.sums[pgno-1]})
		}
	}
	header := encodeSumsHeader(b, p, SumsShipped)
	rec := encodeSumsLog(header, entries)
	if _, err := s.log.WriteAt(rec, 0); err != nil {
		return fmt.Errorf("update page sums: %w", err)
	}
	if err := s.log.Truncate(int64(len(rec))); err != nil {
		return fmt.Errorf("update page sums: %w", err)
	}
	// Runs of consecutive pages in one write each.
	for i := 0; i < len(entries); {
		j := i + 1
		for j < len(entries) && entries[j].pgno == entries[j-1].pgno+1 {
			j++
		}
		buf := make([]byte, 8*(j-i))
		for k := i; k < j; k++ {
			binary.BigEndian.PutUint64(buf[8*(k-i):], uint64(entries[k].sum))
		}
		if _, err := s.f.WriteAt(buf, sumsHeader+8*int64(entries[i].pgno-1)); err != nil {
			return fmt.Errorf("update page sums: %w", err)
		}
		i = j
	}
	if err := s.f.Truncate(sumsHeader + 8*int64(p.Pages())); err != nil {
		return fmt.Errorf("update page sums: %w", err)
	}
	if _, err := s.f.WriteAt(header, 0); err != nil {
		return fmt.Errorf("update page sums: %w", err)
	}
	return nil
}

// Close closes the file.
func (s *SumsFile) Close() error {
	s.log.Close()
	return s.f.Close()
}

var _ io.Closer = (*SumsFile)(nil)

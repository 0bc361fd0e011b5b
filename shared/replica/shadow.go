package replica

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/superfly/ltx"

	"github.com/convex-cluster-manager/ccm/shared/snapstore"
)

// Position is how far the shadow database has applied the WAL stream; it
// is stored beside the shadow database and updated atomically after each
// applied file.
type Position struct {
	Epoch    uint64       `json:"epoch"`
	TXID     ltx.TXID     `json:"txid"`
	Seq      uint64       `json:"seq"`      // stream sequence of the last message consumed
	Checksum ltx.Checksum `json:"checksum"` // rolling LTX checksum of the shadow database
	PageSize uint32       `json:"pageSize,omitempty"`
	Captured time.Time    `json:"captured,omitzero"` // leader capture time of the last applied file
}

// Shadow is the passive's copy of the database: a plain page image written
// only by ccm-walapply, never opened for writing by SQLite.
type Shadow struct {
	path    string
	posPath string
	f       *os.File
	pos     Position
	pages   uint32 // size in pages
}

// positionFile is the name of the position file beside the shadow database.
func positionFile(dbPath string) string { return dbPath + ".ccm-position" }

// OpenShadow opens (creating if needed) the shadow database at path and its
// position, and checks that the file's checksum is the recorded one.
func OpenShadow(path string) (*Shadow, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("create replica directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open shadow database: %w", err)
	}
	s := &Shadow{path: path, posPath: positionFile(path), f: f}
	b, err := os.ReadFile(s.posPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		f.Close()
		return nil, fmt.Errorf("read position: %w", err)
	default:
		if err := json.Unmarshal(b, &s.pos); err != nil {
			f.Close()
			return nil, fmt.Errorf("position file %s: %w", s.posPath, err)
		}
	}
	if s.pos.PageSize != 0 {
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, err
		}
		s.pages = uint32(st.Size() / int64(s.pos.PageSize))
	}
	return s, nil
}

// Verify recomputes the shadow's checksum and compares it with the position.
func (s *Shadow) Verify() error {
	if s.pos.PageSize == 0 {
		return nil
	}
	sum, err := s.checksum()
	if err != nil {
		return err
	}
	if sum != s.pos.Checksum {
		return fmt.Errorf("%w: shadow database checksum %s, position records %s", ErrDiverged, sum, s.pos.Checksum)
	}
	return nil
}

// checksum computes the rolling LTX checksum of the whole file.
func (s *Shadow) checksum() (ltx.Checksum, error) {
	sum, _, err := snapstore.Checksum(io.NewSectionReader(s.f, 0, int64(s.pages)*int64(s.pos.PageSize)), s.pos.PageSize)
	if err != nil {
		return 0, fmt.Errorf("checksum shadow database: %w", err)
	}
	return sum, nil
}

// Position returns the applied position.
func (s *Shadow) Position() Position { return s.pos }

// Path is the shadow database file.
func (s *Shadow) Path() string { return s.path }

// ErrDiverged means the shadow database no longer matches what was applied.
var ErrDiverged = errors.New("shadow database diverged")

// Predict returns the checksum the shadow would have after the LTX file
// read from r, without writing anything.
func (s *Shadow) Predict(r io.Reader) (ltx.Checksum, error) {
	sum, _, err := s.pass(r, false)
	return sum, err
}

// Apply writes the pages of a verified LTX file (read from r) into the
// shadow, truncates it to the file's commit size, syncs, checks the result
// against next.Checksum (the leader's database checksum after the file) and
// records next as the position. After a crash (recovering) the checksum is
// recomputed over the whole file, since the old pages may be gone.
func (s *Shadow) Apply(r io.Reader, next Position, recovering bool) error {
	sum, hdr, err := s.pass(r, true)
	if err != nil {
		return err
	}
	if recovering {
		if sum, err = s.checksum(); err != nil {
			return err
		}
	}
	if sum != next.Checksum {
		return fmt.Errorf("%w: after TXID %d-%d the checksum is %s, the leader's was %s", ErrDiverged, hdr.MinTXID, hdr.MaxTXID, sum, next.Checksum)
	}
	next.PageSize = hdr.PageSize
	return s.SetPosition(next)
}

// pass reads an LTX file and computes the shadow's checksum after it,
// page by page from the current one; with write it also applies the file.
func (s *Shadow) pass(r io.Reader, write bool) (ltx.Checksum, ltx.Header, error) {
	dec := ltx.NewDecoder(r)
	if err := dec.DecodeHeader(); err != nil {
		return 0, ltx.Header{}, fmt.Errorf("decode LTX header: %w", err)
	}
	hdr := dec.Header()
	if s.pos.PageSize != 0 && hdr.PageSize != s.pos.PageSize && !hdr.IsSnapshot() {
		return 0, hdr, fmt.Errorf("LTX page size %d differs from the shadow's %d", hdr.PageSize, s.pos.PageSize)
	}
	sum, pages := s.pos.Checksum, s.pages
	if hdr.IsSnapshot() {
		// A snapshot holds every page: start from an empty file.
		sum, pages = 0, 0
		if write {
			if err := s.f.Truncate(0); err != nil {
				return 0, hdr, fmt.Errorf("truncate shadow: %w", err)
			}
		}
	}
	ps := int64(hdr.PageSize)
	data := make([]byte, hdr.PageSize)
	old := make([]byte, hdr.PageSize)
	h := ltx.NewHasher()
	newPages := pages
	for {
		var ph ltx.PageHeader
		if err := dec.DecodePage(&ph, data); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return 0, hdr, fmt.Errorf("decode page: %w", err)
		}
		off := int64(ph.Pgno-1) * ps
		if ph.Pgno <= pages {
			if _, err := s.f.ReadAt(old, off); err != nil {
				return 0, hdr, fmt.Errorf("read page %d: %w", ph.Pgno, err)
			}
			sum ^= ltx.ChecksumPageWithHasher(h, ph.Pgno, old)
		}
		if write {
			if _, err := s.f.WriteAt(data, off); err != nil {
				return 0, hdr, fmt.Errorf("write page %d: %w", ph.Pgno, err)
			}
		}
		sum = ltx.ChecksumFlag | (sum ^ ltx.ChecksumPageWithHasher(h, ph.Pgno, data))
		newPages = max(newPages, ph.Pgno)
	}
	if err := dec.Close(); err != nil {
		return 0, hdr, fmt.Errorf("LTX trailer: %w", err)
	}
	lock := ltx.LockPgno(hdr.PageSize)
	for pgno := hdr.Commit + 1; pgno <= min(pages, newPages); pgno++ {
		if pgno == lock {
			continue
		}
		if _, err := s.f.ReadAt(old, int64(pgno-1)*ps); err != nil {
			return 0, hdr, fmt.Errorf("read page %d: %w", pgno, err)
		}
		sum = ltx.ChecksumFlag | (sum ^ ltx.ChecksumPageWithHasher(h, pgno, old))
	}
	if !write {
		return sum, hdr, nil
	}
	if err := s.f.Truncate(int64(hdr.Commit) * ps); err != nil {
		return 0, hdr, fmt.Errorf("truncate shadow to %d pages: %w", hdr.Commit, err)
	}
	if err := s.f.Sync(); err != nil {
		return 0, hdr, fmt.Errorf("sync shadow: %w", err)
	}
	s.pages = hdr.Commit
	s.pos.PageSize = hdr.PageSize
	return sum, hdr, nil
}

// SetPosition durably records pos (temporary file, fsync, rename).
func (s *Shadow) SetPosition(pos Position) error {
	b, err := json.Marshal(pos)
	if err != nil {
		return err
	}
	tmp := s.posPath + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return fmt.Errorf("write position: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write position: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync position: %w", err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, s.posPath); err != nil {
		return fmt.Errorf("install position: %w", err)
	}
	s.pos = pos
	return nil
}

// Close closes the shadow database file.
func (s *Shadow) Close() error { return s.f.Close() }

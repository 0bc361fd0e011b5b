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

	"github.com/convex-cluster-manager/ccm/shared/fsutil"
	"github.com/convex-cluster-manager/ccm/shared/walstream"
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
	// Bytes is the chain bytes applied (walstream.Meta.End of the last
	// file): the stream's end minus Bytes is the lag in bytes.
	Bytes int64  `json:"bytes,omitempty"`
	Chain uint64 `json:"chain,omitempty"` // the chain Bytes counts in (walstream.Meta.Chain)
}

// Complete reports whether the shadow holds a whole database: one that
// has applied a full copy (or a snapshot) at least once.
func (p Position) Complete() bool { return p.PageSize != 0 }

// Base is the chain position the shadow is at, as a new writer names it
// when it continues the chain from this database.
func (p Position) Base() walstream.Base {
	return walstream.Base{Epoch: p.Epoch, TXID: p.TXID, Checksum: p.Checksum, Seq: p.Seq, End: p.Bytes, Chain: p.Chain}
}

// Shadow is the passive's copy of the database: a plain page image written
// only by ccm-walapply, never opened for writing by SQLite.
type Shadow struct {
	path    string
	posPath string
	f       *os.File
	pos     Position
	sums    PageSums // of the file as it is; valid once Verify passed
	// verified: sums were computed from the file's content in this
	// process (Verify, or Adopt as it took the file).
	verified bool
}

// positionFile is the name of the position file beside the shadow database.
func positionFile(dbPath string) string { return dbPath + ".ccm-position" }

// OpenShadow opens (creating if needed) the shadow database at path and its
// position. Verify must pass before anything is applied.
func OpenShadow(path string) (*Shadow, error) {
	if err := os.MkdirAll(filepath.Dir(path), fsutil.DataDir); err != nil {
		return nil, fmt.Errorf("create replica directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, fsutil.DataFile)
	if err != nil {
		return nil, fmt.Errorf("open shadow database: %w", err)
	}
	if err := hold(f, path); err != nil {
		f.Close()
		return nil, err
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
	return s, nil
}

// Verify reads the whole shadow, computing its page checksums, and
// compares the database checksum with the position's.
func (s *Shadow) Verify() error {
	if !s.pos.Complete() {
		s.sums = PageSums{}
		return nil
	}
	st, err := s.f.Stat()
	if err != nil {
		return err
	}
	pages := st.Size() / int64(s.pos.PageSize)
	sums, err := BuildPageSums(io.NewSectionReader(s.f, 0, pages*int64(s.pos.PageSize)), s.pos.PageSize)
	if err != nil {
		return fmt.Errorf("checksum shadow database: %w", err)
	}
	if sums.Checksum() != s.pos.Checksum {
		return fmt.Errorf("%w: shadow database checksum %s, position records %s", ErrDiverged, sums.Checksum(), s.pos.Checksum)
	}
	s.sums, s.verified = sums, true
	return nil
}

// Verified reports whether the shadow's content was checked against its
// position since it was opened.
func (s *Shadow) Verified() bool { return s.verified }

// Position returns the applied position.
func (s *Shadow) Position() Position { return s.pos }

// Path is the shadow database file.
func (s *Shadow) Path() string { return s.path }

// ErrDiverged means the shadow database no longer matches what was applied.
var ErrDiverged = errors.New("shadow database diverged")

// Predict decodes a whole LTX file from r, verifying its structure and
// file checksum, and returns its header and the checksum the shadow would
// have after it. It writes nothing: the shadow's page sums move to the
// predicted state until undo, or until Apply writes the file.
func (s *Shadow) Predict(r io.Reader) (hdr ltx.Header, sum ltx.Checksum, undo func(), err error) {
	hdr, undo, err = s.sums.Apply(r)
	if err != nil {
		return hdr, 0, nil, err
	}
	return hdr, s.sums.Checksum(), undo, nil
}

// Apply writes the pages of the LTX file that Predict verified (read
// again from r) into the shadow, truncates it to the file's commit size,
// syncs and records next as the position. next.Checksum must be the one
// Predict returned.
func (s *Shadow) Apply(r io.Reader, next Position) error {
	if sum := s.sums.Checksum(); sum != next.Checksum {
		return fmt.Errorf("%w: the predicted checksum is %s, the position to record %s", ErrChecksum, sum, next.Checksum)
	}
	if _, err := s.write(r); err != nil {
		// The file is in an unknown state: only a restart (which finishes
		// the apply from the journal) may touch it again.
		s.sums = PageSums{}
		return err
	}
	return s.SetPosition(next)
}

// Recover re-applies a verified LTX file whose apply was interrupted
// (its pages are absolute images, so writing them again is harmless),
// then checks the whole file against next.Checksum and records next.
func (s *Shadow) Recover(r io.Reader, next Position) error {
	hdr, err := s.write(r)
	if err != nil {
		return err
	}
	next.PageSize = hdr.PageSize // absent in records of older versions
	s.pos = next
	if err := s.Verify(); err != nil {
		return err
	}
	return s.SetPosition(next)
}

// write writes the pages of an LTX file into the shadow file, truncates it
// to the file's commit size and syncs.
func (s *Shadow) write(r io.Reader) (ltx.Header, error) {
	// Predict verified the file (and the journal holding it is synced):
	// its checksum is not computed again.
	lr, err := NewLTXReader(r, false)
	if err != nil {
		return ltx.Header{}, err
	}
	hdr := lr.Header()
	if hdr.IsSnapshot() {
		// A snapshot holds every page: start from an empty file.
		if err := s.f.Truncate(0); err != nil {
			return hdr, fmt.Errorf("truncate shadow: %w", err)
		}
	}
	ps := int64(hdr.PageSize)
	// Pages come in page order: runs of consecutive pages are written with
	// one call (a page at a time costs three times as much).
	run := make([]byte, 0, max(ps, 1<<20))
	var first uint32 // of the run
	wb := fsutil.NewWriteback(s.f)
	flush := func() error {
		if len(run) == 0 {
			return nil
		}
		if _, err := s.f.WriteAt(run, int64(first-1)*ps); err != nil {
			return fmt.Errorf("write pages %d-%d: %w", first, first+uint32(int64(len(run))/ps)-1, err)
		}
		wb.Wrote(len(run))
		run = run[:0]
		return nil
	}
	data := make([]byte, hdr.PageSize)
	for {
		pgno, err := lr.Next(data)
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return hdr, err
		}
		if len(run) == cap(run) || (len(run) > 0 && pgno != first+uint32(int64(len(run))/ps)) {
			if err := flush(); err != nil {
				return hdr, err
			}
		}
		if len(run) == 0 {
			first = pgno
		}
		run = append(run, data...)
	}
	if err := flush(); err != nil {
		return hdr, err
	}
	if _, err := lr.Close(); err != nil {
		return hdr, err
	}
	if err := s.f.Truncate(int64(hdr.Commit) * ps); err != nil {
		return hdr, fmt.Errorf("truncate shadow to %d pages: %w", hdr.Commit, err)
	}
	if err := s.f.Sync(); err != nil {
		return hdr, fmt.Errorf("sync shadow: %w", err)
	}
	return hdr, nil
}

// SetPosition durably records pos (temporary file, fsync, rename).
func (s *Shadow) SetPosition(pos Position) error {
	b, err := json.Marshal(pos)
	if err != nil {
		return err
	}
	if err := fsutil.WriteFileSync(s.posPath, b, fsutil.DataFile); err != nil {
		return fmt.Errorf("record position: %w", err)
	}
	s.pos = pos
	return nil
}

// WriteSums writes the shadow's page-sums file (SumsPath) at its position,
// so that a walship shipping this database once it is promoted continues
// the chain without reading it.
func (s *Shadow) WriteSums() error {
	if !s.pos.Complete() {
		return nil
	}
	return WriteSums(SumsPath(s.path), s.pos.Base(), &s.sums, SumsHandover)
}

// Close closes the shadow database file.
func (s *Shadow) Close() error { return s.f.Close() }

package replica

import (
	"context"
	"database/sql"
	"fmt"
	"io"

	"github.com/superfly/ltx"
)

// Check is a database compared, page by page, with the page sums recorded
// for its position: what ccm verify and the periodic checks report.
type Check struct {
	Pages    uint32       `json:"pages"`    // pages read
	Actual   ltx.Checksum `json:"actual"`   // of the database as read
	Recorded ltx.Checksum `json:"recorded"` // of the position
	// FirstBad is the first page whose content differs from the record
	// (0: none); BadPages counts them, pages beyond either size included.
	FirstBad uint32 `json:"firstBadPage,omitempty"`
	BadPages uint32 `json:"badPages,omitempty"`
}

// Verification is the reply of verify: a node's database at its position
// (a passive's shadow; the database the leader ships), checked.
type Verification struct {
	Position Position `json:"position"`
	Check
	ElapsedMs int64 `json:"elapsedMs"`
}

// Consistent reports whether the database is what its position records.
func (c Check) Consistent() bool { return c.Actual == c.Recorded && c.BadPages == 0 }

// String says what the check found.
func (c Check) String() string {
	if c.Consistent() {
		return fmt.Sprintf("consistent: %d pages, checksum %s", c.Pages, c.Actual)
	}
	return fmt.Sprintf("checksum %s, recorded %s: %d of %d pages differ, first page %d", c.Actual, c.Recorded, c.BadPages, c.Pages, c.FirstBad)
}

// Compare checks the page sums of a database as read (actual) against
// those recorded for its position.
func Compare(rec, actual *PageSums) Check { return compare(rec, rec.Checksum(), actual) }

// compare is Compare with the position's checksum given apart.
func compare(rec *PageSums, recorded ltx.Checksum, actual *PageSums) Check {
	c := Check{Pages: actual.Pages(), Actual: actual.Checksum(), Recorded: recorded}
	for pgno := uint32(1); pgno <= max(rec.Pages(), actual.Pages()); pgno++ {
		if rec.Page(pgno) != actual.Page(pgno) {
			c.BadPages++
			if c.FirstBad == 0 {
				c.FirstBad = pgno
			}
		}
	}
	return c
}

// Check reads the whole shadow and compares it with the page sums of its
// position, kept since the Applier's start (Verify or Adopt). The caller
// must not apply meanwhile.
func (s *Shadow) Check() (Check, error) {
	if !s.pos.Complete() {
		return Check{}, nil // empty: nothing applied yet
	}
	st, err := s.f.Stat()
	if err != nil {
		return Check{}, err
	}
	ps := int64(s.pos.PageSize)
	got, err := BuildPageSums(io.NewSectionReader(s.f, 0, st.Size()/ps*ps), s.pos.PageSize)
	if err != nil {
		return Check{}, fmt.Errorf("checksum shadow database: %w", err)
	}
	return compare(&s.sums, s.pos.Checksum, &got), nil
}

// DatabasePageSums computes the page sums of the live database at path in
// one read transaction (sqlite_dbpage: the pages a reader sees, those
// still in the WAL included).
func DatabasePageSums(ctx context.Context, path string) (PageSums, error) {
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)&_pragma=query_only(1)")
	if err != nil {
		return PageSums{}, err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return PageSums{}, err
	}
	defer tx.Rollback()
	var pageSize uint32
	if err := tx.QueryRowContext(ctx, `PRAGMA page_size`).Scan(&pageSize); err != nil {
		return PageSums{}, fmt.Errorf("read %s: %w", path, err)
	}
	rows, err := tx.QueryContext(ctx, `SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno`)
	if err != nil {
		return PageSums{}, fmt.Errorf("read the pages of %s: %w", path, err)
	}
	defer rows.Close()
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		var err error
		lock := ltx.LockPgno(pageSize)
		for want := uint32(1); err == nil && rows.Next(); want++ {
			var pgno uint32
			var data []byte
			if err = rows.Scan(&pgno, &data); err != nil {
				break
			}
			if pgno == want+1 && want == lock { // no row for the lock page: BuildPageSums skips it anyway
				if _, err = pw.Write(make([]byte, pageSize)); err != nil {
					break
				}
				want++
			}
			if pgno != want || uint32(len(data)) != pageSize {
				err = fmt.Errorf("page %d of %d bytes where page %d of %d was expected", pgno, len(data), want, pageSize)
				break
			}
			_, err = pw.Write(data)
		}
		if err == nil {
			err = rows.Err()
		}
		pw.CloseWithError(err)
	}()
	sums, err := BuildPageSums(pr, pageSize)
	pr.CloseWithError(err) // stops the writer if the reader failed
	<-done
	if err != nil {
		return PageSums{}, fmt.Errorf("read the pages of %s: %w", path, err)
	}
	return sums, nil
}

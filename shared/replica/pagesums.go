package replica

import (
	"bufio"
	"errors"
	"fmt"
	"io"

	"github.com/superfly/ltx"
)

// PageSums holds the LTX checksum of every page of a database, so that the
// database checksum after an LTX file is known without reading the
// database: the leader needs it for the checksums each shipped file
// carries (Litestream writes its files without them), a shadow to predict
// and check what a file will do. It costs 8 bytes a page (2 MiB per GiB at
// 4 KiB pages).
type PageSums struct {
	pageSize uint32
	sums     []ltx.Checksum // index pgno-1; 0 for the lock page
	sum      ltx.Checksum
	dirty    []uint32 // pages set since the last TakeDirty, for SumsFile
}

// Checksum is the rolling LTX checksum of the whole database.
func (p *PageSums) Checksum() ltx.Checksum { return p.sum }

// Pages is the database size in pages.
func (p *PageSums) Pages() uint32 { return uint32(len(p.sums)) }

// PageSize is the database page size (0 while empty).
func (p *PageSums) PageSize() uint32 { return p.pageSize }

// set replaces the checksum of pgno and keeps the total.
func (p *PageSums) set(pgno uint32, c ltx.Checksum) {
	old := p.sums[pgno-1]
	p.sums[pgno-1] = c
	p.sum = ltx.ChecksumFlag | (p.sum ^ old ^ c)
	p.dirty = append(p.dirty, pgno)
}

// takeDirty returns the pages set since the last call (some perhaps
// beyond the current size, or set back by an undo) and forgets them.
func (p *PageSums) takeDirty() []uint32 {
	d := p.dirty
	p.dirty = nil
	return d
}

// Apply decodes an LTX file from r and updates the table as if the file
// were applied to the database. It returns the file's header and a
// function that restores the table as it was (to predict, or when the
// file could not be shipped). A file that is not a snapshot needs a table
// to apply to. On error the table is unchanged.
func (p *PageSums) Apply(r io.Reader) (ltx.Header, func(), error) { return p.apply(r, true) }

// ApplyLocal is Apply for a file Litestream has just written on this
// node: its file checksum is not computed (the passives check it).
func (p *PageSums) ApplyLocal(r io.Reader) (ltx.Header, func(), error) { return p.apply(r, false) }

func (p *PageSums) apply(r io.Reader, verify bool) (ltx.Header, func(), error) {
	lr, err := NewLTXReader(r, verify)
	if err != nil {
		return ltx.Header{}, nil, err
	}
	hdr := lr.Header()
	saved := *p
	type change struct {
		pgno uint32
		old  ltx.Checksum
	}
	var changes []change
	undo := func() {
		if hdr.IsSnapshot() {
			*p = saved
			return
		}
		p.sums = p.sums[:max(len(p.sums), len(saved.sums))]
		for i := len(changes) - 1; i >= 0; i-- {
			p.sums[changes[i].pgno-1] = changes[i].old
		}
		p.sums = p.sums[:len(saved.sums)]
		p.sum = saved.sum
	}
	switch {
	case hdr.IsSnapshot():
		*p = PageSums{pageSize: hdr.PageSize, sums: make([]ltx.Checksum, hdr.Commit), dirty: saved.dirty}
	case p.sums == nil:
		return hdr, nil, fmt.Errorf("LTX %d-%d is not a snapshot, and there is no database to apply it to", hdr.MinTXID, hdr.MaxTXID)
	case hdr.PageSize != p.pageSize:
		return hdr, nil, fmt.Errorf("LTX %d-%d has page size %d, the database %d", hdr.MinTXID, hdr.MaxTXID, hdr.PageSize, p.pageSize)
	}
	// Grow first (the saved length restores it); pages beyond the new
	// commit size are dropped at the end.
	if n := int(hdr.Commit); n > len(p.sums) {
		if n <= cap(p.sums) {
			p.sums = p.sums[:n]
			clear(p.sums[len(saved.sums):])
		} else {
			p.sums = append(p.sums, make([]ltx.Checksum, n-len(p.sums))...)
		}
	}
	data := make([]byte, hdr.PageSize)
	h := ltx.NewHasher()
	fail := func(err error) (ltx.Header, func(), error) {
		undo()
		return hdr, nil, err
	}
	for {
		pgno, err := lr.Next(data)
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return fail(err)
		}
		if pgno > hdr.Commit {
			return fail(fmt.Errorf("LTX page %d beyond commit size %d", pgno, hdr.Commit))
		}
		if int(pgno) <= len(saved.sums) { // undo cuts the pages beyond
			changes = append(changes, change{pgno, p.sums[pgno-1]})
		}
		p.set(pgno, ltx.ChecksumPageWithHasher(h, pgno, data))
	}
	if _, err := lr.Close(); err != nil {
		return fail(err)
	}
	for pgno := hdr.Commit + 1; pgno <= uint32(len(p.sums)); pgno++ {
		changes = append(changes, change{pgno, p.sums[pgno-1]})
		p.set(pgno, 0)
	}
	p.sums = p.sums[:hdr.Commit]
	p.pageSize = hdr.PageSize
	return hdr, undo, nil
}

// BuildPageSums computes the table of a database image read from r, page
// by page (skipping SQLite's lock page, as LTX does).
func BuildPageSums(r io.Reader, pageSize uint32) (PageSums, error) {
	r = bufio.NewReaderSize(r, 1<<20) // not a system call per page
	p := PageSums{pageSize: pageSize}
	buf := make([]byte, pageSize)
	lock := ltx.LockPgno(pageSize)
	h := ltx.NewHasher()
	for pgno := uint32(1); ; pgno++ {
		_, err := io.ReadFull(r, buf)
		if errors.Is(err, io.EOF) {
			return p, nil
		}
		if err != nil {
			return p, fmt.Errorf("read page %d: %w", pgno, err)
		}
		p.sums = append(p.sums, 0)
		if pgno != lock {
			p.set(pgno, ltx.ChecksumPageWithHasher(h, pgno, buf))
		}
	}
}

// Page is the checksum of page pgno (0 beyond the end).
func (p *PageSums) Page(pgno uint32) ltx.Checksum {
	if pgno == 0 || pgno > p.Pages() {
		return 0
	}
	return p.sums[pgno-1]
}

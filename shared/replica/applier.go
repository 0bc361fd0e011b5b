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

	"github.com/nats-io/nats.go"

	"github.com/convex-cluster-manager/ccm/shared/fsutil"
	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

// Reasons an applier refuses a message. Nothing of a refused message is
// applied; the node must be resynchronised from a snapshot.
var (
	ErrCorrupt    = errors.New("corrupt WAL message")
	ErrGap        = errors.New("gap in the WAL stream")
	ErrChecksum   = errors.New("LTX does not chain onto the shadow database")
	ErrStaleEpoch = errors.New("WAL message from an older epoch")
)

// ErrInterrupted means an apply failed after its first page could be
// written (a full disk, an I/O error): the applier refuses everything
// until it is replaced; a new one (NewApplier, when the disk allows)
// finishes the apply from its journal.
var ErrInterrupted = errors.New("an apply did not finish: reopen the shadow to finish it")

// Applier applies WAL stream messages, in stream order, to a Shadow. LTX
// chunks are assembled in a journal file; a complete file is verified
// (file checksum, TXID chain, pre-apply checksum) before any page is written.
type Applier struct {
	shadow   *Shadow
	jpath    string
	journal  *os.File
	jwb      *fsutil.Writeback
	jmeta    walstream.Meta // first chunk's header of the file being assembled
	jnext    int            // next chunk index expected; 0 = none in progress
	jstart   uint64         // stream sequence of its first chunk
	pred     *prediction    // of the file being assembled
	consumed uint64         // last stream sequence handled
	captured time.Time      // capture time of the newest applied file
	broken   error          // an apply that did not finish (ErrInterrupted)
}

// Assembling reports whether a file's chunks are being assembled: the
// shadow's page sums then already predict part of it, and Shadow.Check
// must wait until it is applied.
func (a *Applier) Assembling() bool { return a.jnext != 0 }

// NewApplier returns an applier for shadow, first finishing an apply that
// a crash interrupted.
func NewApplier(shadow *Shadow) (*Applier, error) {
	a := &Applier{shadow: shadow, jpath: shadow.Path() + ".ccm-incoming"}
	recovered, err := a.recover()
	if err != nil {
		return nil, err
	}
	if !recovered && !shadow.Verified() { // Recover verified the whole file already
		if err := shadow.Verify(); err != nil {
			return nil, err
		}
	}
	// Only now: a recovered apply moved the position past its file.
	a.consumed, a.captured = shadow.Position().Seq, shadow.Position().Captured
	return a, nil
}

func (a *Applier) donePath() string { return a.jpath + ".apply" }

// recover re-applies a verified file whose apply was interrupted (its
// pages are absolute images, so writing them again is harmless) and
// reports whether there was one.
func (a *Applier) recover() (bool, error) {
	b, err := os.ReadFile(a.donePath())
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read interrupted apply: %w", err)
	}
	var next Position
	if err := json.Unmarshal(b, &next); err != nil {
		return false, fmt.Errorf("interrupted apply record %s: %w", a.donePath(), err)
	}
	f, err := os.Open(a.jpath)
	if err != nil {
		return false, fmt.Errorf("journal of interrupted apply: %w", err)
	}
	defer f.Close()
	if err := a.shadow.Recover(f, next); err != nil {
		return false, fmt.Errorf("finish interrupted apply of TXID %d: %w", next.TXID, err)
	}
	return true, a.removeRecord()
}

// Position is the applied position.
func (a *Applier) Position() Position { return a.shadow.Position() }

// Consumed is the last stream sequence handled (applied, or part of a file
// still being assembled).
func (a *Applier) Consumed() uint64 { return a.consumed }

// Handle processes the message at stream sequence seq.
//
// An error that is not a refusal (ErrCorrupt, ErrGap, ErrChecksum,
// ErrStaleEpoch) leaves the applier as it was before the file being
// assembled (Consumed goes back before its first chunk), so that the
// stream can be followed again from there once the cause is gone; or, if
// the file's pages were being written, is ErrInterrupted.
func (a *Applier) Handle(seq uint64, h nats.Header, data []byte) error {
	if a.broken != nil {
		return fmt.Errorf("%w: %w", ErrInterrupted, a.broken)
	}
	pos := a.shadow.Position()
	if seq <= a.consumed {
		return nil // redelivered
	}
	if seq != a.consumed+1 && a.consumed != 0 {
		return fmt.Errorf("%w: expected sequence %d, got %d (messages aged out of the stream?)", ErrGap, a.consumed+1, seq)
	}
	m, err := walstream.ParseMeta(h)
	if err != nil {
		return fmt.Errorf("%w at sequence %d: %w", ErrCorrupt, seq, err)
	}
	if m.Epoch < pos.Epoch {
		return fmt.Errorf("%w: sequence %d is from epoch %d, the shadow is at epoch %d", ErrStaleEpoch, seq, m.Epoch, pos.Epoch)
	}
	if m.Kind == walstream.KindMarker {
		a.resetJournal()
		next := pos
		next.Seq, next.Epoch = seq, m.Epoch
		if b := m.Base; b != nil {
			// The new writer continues the chain from b: a shadow there
			// continues too, with no copy.
			if !pos.Complete() || pos.TXID != b.TXID || pos.Checksum != b.Checksum {
				return fmt.Errorf("%w: epoch %d at sequence %d continues from TXID %d (checksum %s, epoch %d), the shadow is at TXID %d (checksum %s, epoch %d)",
					ErrChecksum, m.Epoch, seq, b.TXID, b.Checksum, b.Epoch, pos.TXID, pos.Checksum, pos.Epoch)
			}
			next.Bytes, next.Chain = b.End, b.Chain
		} else {
			next.TXID, next.Bytes, next.Chain = 0, 0, seq // a full copy starts a chain
		}
		if err := a.shadow.SetPosition(next); err != nil {
			return err
		}
		a.consumed = seq
		return nil
	}
	if m.Epoch > pos.Epoch {
		return fmt.Errorf("%w: sequence %d is from epoch %d but its marker was not seen (shadow at epoch %d)", ErrGap, seq, m.Epoch, pos.Epoch)
	}
	if err := a.addChunk(seq, m, data); err != nil {
		a.rewind()
		return err
	}
	a.consumed = seq
	if !m.Last {
		return nil
	}
	start := a.jstart
	err = a.applyJournal(seq, m)
	if err != nil && a.broken == nil {
		a.consumed = start - 1 // nothing of the file was written: it is needed again
	}
	return err
}

// rewind drops the file being assembled and moves Consumed back before its
// first chunk.
func (a *Applier) rewind() {
	if a.jnext != 0 {
		a.consumed = a.jstart - 1
	}
	a.resetJournal()
}

// resetJournal drops the file being assembled, and its prediction.
func (a *Applier) resetJournal() {
	if a.pred != nil {
		a.pred.abort()
		a.pred = nil
	}
	if a.journal != nil {
		a.journal.Close()
		a.journal = nil
	}
	a.jnext = 0
}

func (a *Applier) addChunk(seq uint64, m walstream.Meta, data []byte) error {
	if m.Chunk == 0 {
		a.resetJournal()
		f, err := os.OpenFile(a.jpath, os.O_RDWR|os.O_CREATE|os.O_TRUNC, fsutil.DataFile)
		if err != nil {
			return fmt.Errorf("open journal: %w", err)
		}
		a.journal, a.jmeta, a.jwb, a.jstart, a.jnext = f, m, fsutil.NewWriteback(f), seq, 0
		a.pred = predict(a.shadow)
	} else if a.jnext == 0 {
		return fmt.Errorf("%w: sequence %d is chunk %d of TXID %d-%d, but no file is being assembled", ErrGap, seq, m.Chunk, m.MinTXID, m.MaxTXID)
	} else if m.Chunk != a.jnext || m.MinTXID != a.jmeta.MinTXID || m.MaxTXID != a.jmeta.MaxTXID {
		return fmt.Errorf("%w: sequence %d is chunk %d of TXID %d-%d, expected chunk %d of TXID %d-%d",
			ErrGap, seq, m.Chunk, m.MinTXID, m.MaxTXID, a.jnext, a.jmeta.MinTXID, a.jmeta.MaxTXID)
	}
	if _, err := a.journal.Write(data); err != nil {
		return fmt.Errorf("write journal: %w", err)
	}
	a.jwb.Wrote(len(data))
	a.pred.write(data)
	a.jnext = m.Chunk + 1
	return nil
}

// applyJournal verifies the assembled file, then applies it.
func (a *Applier) applyJournal(seq uint64, m walstream.Meta) error {
	defer a.resetJournal()
	f := a.journal
	pos := a.shadow.Position()
	hdr, post, undo, err := a.pred.finish()
	a.pred = nil
	if err != nil {
		return fmt.Errorf("%w: TXID %d-%d at sequence %d: %w", ErrCorrupt, m.MinTXID, m.MaxTXID, seq, err)
	}
	applying := false
	defer func() {
		if !applying {
			undo() // the shadow's sums return to its content
		}
	}()
	if hdr.MinTXID != m.MinTXID || hdr.MaxTXID != m.MaxTXID {
		return fmt.Errorf("%w: sequence %d announces TXID %d-%d but holds %d-%d", ErrCorrupt, seq, m.MinTXID, m.MaxTXID, hdr.MinTXID, hdr.MaxTXID)
	}
	next := Position{Epoch: m.Epoch, TXID: hdr.MaxTXID, Seq: seq, Captured: m.Captured, Checksum: m.Post, Bytes: m.End,
		Chain: m.Chain, PageSize: hdr.PageSize}
	if hdr.IsSnapshot() {
		if pos.PageSize == hdr.PageSize && m.Post == pos.Checksum && pos.Checksum != 0 {
			// The new epoch starts from exactly our content: nothing to write.
			a.captured = m.Captured
			return a.shadow.SetPosition(next)
		}
	} else {
		if hdr.MinTXID != pos.TXID+1 {
			return fmt.Errorf("%w: TXID %d-%d does not follow the applied TXID %d (epoch %d)", ErrGap, hdr.MinTXID, hdr.MaxTXID, pos.TXID, pos.Epoch)
		}
		if m.Pre != pos.Checksum {
			return fmt.Errorf("%w: TXID %d expects database checksum %s before it, the shadow has %s", ErrChecksum, hdr.MinTXID, m.Pre, pos.Checksum)
		}
	}
	if post != m.Post {
		return fmt.Errorf("%w: applying TXID %d-%d would give checksum %s, the leader's is %s", ErrChecksum, hdr.MinTXID, hdr.MaxTXID, post, m.Post)
	}
	// Write-ahead: the journal and the record that points at it are on
	// disk before the first page is written, so that a power cut in the
	// middle is finished on start instead of leaving a shadow that matches
	// no position.
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync journal: %w", err)
	}
	b, _ := json.Marshal(next)
	if err := fsutil.WriteFileSync(a.donePath(), b, fsutil.DataFile); err != nil {
		return fmt.Errorf("record apply: %w", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	applying = true
	if err := a.shadow.Apply(f, next); err != nil {
		a.broken = err
		return fmt.Errorf("%w: %w", ErrInterrupted, err)
	}
	a.captured = m.Captured
	if err := a.removeRecord(); err != nil {
		// Applied and recorded; the next file's journal must not be
		// written under a record that still points at this one.
		a.broken = err
		return fmt.Errorf("%w: %w", ErrInterrupted, err)
	}
	return nil
}

// removeRecord removes the interrupted-apply record durably: one that
// came back after a power cut would point at the next file's journal.
func (a *Applier) removeRecord() error {
	if err := os.Remove(a.donePath()); err != nil {
		return err
	}
	return fsutil.SyncDir(filepath.Dir(a.donePath()))
}

// Captured is the leader's capture time of the newest applied file.
func (a *Applier) Captured() time.Time { return a.captured }

// Close releases the journal.
func (a *Applier) Close() { a.resetJournal() }

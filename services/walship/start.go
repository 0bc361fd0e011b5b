package walship

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/benbjohnson/litestream"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/superfly/ltx"

	"github.com/convex-cluster-manager/ccm/shared/replica"
	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

// How a shipper starts its epoch.
const (
	startFull     = "full copy" // the chain starts again from a snapshot of the database
	startContinue = "continue"  // a new epoch continues the chain from the database as it is
	startResume   = "resume"    // a restart within the epoch resumes Litestream's own state
)

// plan is how a shipper starts: from base (with the database's page sums
// at base) or, with a reason, by a full copy.
type plan struct {
	how    string
	base   walstream.Base
	pages  replica.PageSums
	tail   uint64 // the stream's last sequence, checked against base
	reason string // why a full copy
}

// planStart decides how epoch starts on the database at dbPath: a chain
// position recorded in its page-sums file is used when the stream holds
// nothing complete after it and the database is still at it.
func planStart(ctx context.Context, js jetstream.JetStream, cluster string, epoch uint64, db *litestream.DB) (plan, error) {
	full := func(format string, args ...any) (plan, error) {
		return plan{how: startFull, reason: fmt.Sprintf(format, args...)}, nil
	}
	sums, err := replica.ReadSums(replica.SumsPath(db.Path()))
	if errors.Is(err, replica.ErrNoSums) {
		return full("no chain position recorded for this database (%v)", err)
	}
	if err != nil {
		return plan{}, err
	}
	s, err := js.Stream(ctx, walstream.Stream(cluster))
	if err != nil {
		return plan{}, fmt.Errorf("WAL stream: %w", err)
	}
	last, m, err := walstream.Last(ctx, s)
	if err != nil {
		return plan{}, err
	}
	// The chain's head is the last complete file (or marker); a file whose
	// append was cut short may follow it, chunk after chunk, and the next
	// marker abandons it.
	headSeq, head := last, m
	if m.Kind == walstream.KindLTX && !m.Last && last > uint64(m.Chunk)+1 {
		headSeq = last - 1 - uint64(m.Chunk)
		if head, err = walstream.At(ctx, s, headSeq); errors.Is(err, walstream.ErrBadMessage) {
			return full("the stream's head cannot be read: %v", err)
		} else if err != nil {
			return plan{}, err
		}
	}
	b := sums.Base
	if headSeq != b.Seq && b.Epoch == epoch && head.Kind == walstream.KindLTX && head.Last && head.Epoch == epoch && head.MaxTXID > b.TXID {
		// Killed after an append and before recording it: the files
		// since are in Litestream's local state.
		if err := advance(db, &sums.Pages, b.TXID, head.MaxTXID); err != nil {
			return full("the stream is at TXID %d, the recorded position at %d: %v", head.MaxTXID, b.TXID, err)
		}
		b = walstream.Base{Epoch: epoch, TXID: head.MaxTXID, Checksum: sums.Pages.Checksum(), Seq: headSeq, End: head.End, Chain: head.Chain}
	}
	atBase := headSeq == b.Seq && isAt(head, b)
	tailOK := headSeq == last || m.MinTXID == b.TXID+1 // a cut-short file after the head follows it
	if b.Seq < headSeq && b.Epoch != epoch && head.Epoch != epoch {
		// The database is at an earlier position of the chain, which
		// other epochs continued: a full copy of it would roll every node
		// back (a promotion drained from a stale view of the stream did).
		// (This epoch's own marker after it is a restart before the new
		// position was recorded.)
		if at, err := walstream.At(ctx, s, b.Seq); err == nil && isAt(at, b) {
			return plan{}, fmt.Errorf("%w: this database is at seq %d (epoch %d, TXID %d) of the WAL stream, which others continued to seq %d (epoch %d, TXID %d): "+
				"opening epoch %d from it would roll the cluster back", ErrBehind, b.Seq, b.Epoch, b.TXID, headSeq, head.Epoch, max(head.MaxTXID, baseTXID(head)), epoch)
		}
	}
	if !atBase || !tailOK {
		return full("the stream's head (seq %d, epoch %d, TXID %d) is not the recorded position (seq %d, epoch %d, TXID %d)",
			headSeq, head.Epoch, max(head.MaxTXID, baseTXID(head)), b.Seq, b.Epoch, b.TXID)
	}
	p := plan{base: b, pages: sums.Pages, tail: last}
	if b.Epoch == epoch {
		// Restarted within the epoch: Litestream's local files hold what
		// was captured after the base, shipped or not.
		newest, err := checkLocalLTX(db, b.TXID)
		if err != nil {
			return full("Litestream's local state cannot resume from TXID %d: %v", b.TXID, err)
		}
		if restarted, err := walRestartedInPlace(db, newest); err != nil {
			return full("Litestream's local state cannot resume from TXID %d: %v", b.TXID, err)
		} else if restarted {
			// Litestream would skip what was checkpointed before the
			// restart: make it capture the whole database instead.
			if err := truncateWAL(ctx, db.Path()); err != nil {
				return full("the WAL restarted while walship was down, and cannot be truncated (%v): changes checkpointed before the restart cannot be told apart", err)
			}
		}
		p.how = startResume
		return p, nil
	}
	if err := checkDatabase(db.Path(), sums); err != nil {
		return full("the database is not at the recorded position: %v", err)
	}
	p.how = startContinue
	return p, nil
}

// ErrBehind means the database to ship is at an earlier position of the
// WAL stream's chain: this node must not open an epoch from it.
var ErrBehind = errors.New("the database is behind the WAL stream")

// isAt reports whether m is the chain position b: a marker continuing
// from it, or the last chunk of the file that ends at it.
func isAt(m walstream.Meta, b walstream.Base) bool {
	return m.Epoch == b.Epoch &&
		(m.Kind == walstream.KindMarker && m.Base != nil && m.Base.TXID == b.TXID && m.Base.Checksum == b.Checksum ||
			m.Kind == walstream.KindLTX && m.Last && m.MaxTXID == b.TXID && m.Post == b.Checksum)
}

// baseTXID is the TXID a marker continues from (0 for other messages).
func baseTXID(m walstream.Meta) ltx.TXID {
	if m.Base != nil {
		return m.Base.TXID
	}
	return 0
}

// advance applies Litestream's local files from TXID after+1 to to to the
// page sums.
func advance(db *litestream.DB, pages *replica.PageSums, after, to ltx.TXID) error {
	for txid := after + 1; txid <= to; txid++ {
		f, err := os.Open(db.LTXPath(0, txid, txid))
		if err != nil {
			return err
		}
		_, _, err = pages.Apply(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("local LTX %d: %w", txid, err)
		}
	}
	return nil
}

// checkLocalLTX checks that Litestream's L0 directory holds every file from
// TXID from to its newest, and returns the newest.
func checkLocalLTX(db *litestream.DB, from ltx.TXID) (ltx.TXID, error) {
	entries, err := os.ReadDir(db.LTXLevelDir(0))
	if err != nil {
		return 0, err
	}
	have := map[ltx.TXID]bool{}
	newest := ltx.TXID(0)
	for _, e := range entries {
		lo, hi, err := ltx.ParseFilename(e.Name())
		if err != nil || lo != hi {
			continue
		}
		have[lo] = true
		newest = max(newest, hi)
	}
	if newest < from {
		return 0, fmt.Errorf("its newest file is TXID %d", newest)
	}
	for txid := from; txid <= newest; txid++ {
		if !have[txid] {
			return 0, fmt.Errorf("file of TXID %d is missing", txid)
		}
	}
	return newest, nil
}

// checkDatabase checks that the database file is the one sums describes.
// A drained shadow handed over on promotion was verified page by page as
// it was applied and has no WAL: its size and first page are checked. A
// database this node shipped itself may hold changes committed after its
// last shipped file, so it is read whole.
func checkDatabase(path string, sums replica.Sums) error {
	if st, err := os.Stat(path + "-wal"); err == nil && st.Size() > 0 {
		return fmt.Errorf("it has a WAL of %d bytes", st.Size())
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	ps := int64(sums.Pages.PageSize())
	if want := int64(sums.Pages.Pages()) * ps; st.Size() != want {
		return fmt.Errorf("it holds %d bytes, the position %d pages of %d bytes", st.Size(), sums.Pages.Pages(), ps)
	}
	n := ps
	if sums.Source != replica.SumsHandover {
		n = st.Size()
	}
	got, err := replica.BuildPageSums(io.NewSectionReader(f, 0, n), uint32(ps))
	if err != nil {
		return err
	}
	if sums.Source == replica.SumsHandover {
		if a, b := got.Checksum(), sums.Pages.Page(1); a != b {
			return fmt.Errorf("its first page has checksum %s, the position %s", a, b)
		}
		return nil
	}
	if got.Checksum() != sums.Base.Checksum {
		return fmt.Errorf("its checksum is %s, the position's %s", got.Checksum(), sums.Base.Checksum)
	}
	return nil
}

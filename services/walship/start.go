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
	b := sums.Base
	s, err := js.Stream(ctx, walstream.Stream(cluster))
	if err != nil {
		return plan{}, fmt.Errorf("WAL stream: %w", err)
	}
	last, m, err := walstream.Last(ctx, s)
	if err != nil {
		return plan{}, err
	}
	atBase := last == b.Seq && m.Epoch == b.Epoch &&
		(m.Kind == walstream.KindMarker && m.Base != nil && m.Base.TXID == b.TXID && m.Base.Checksum == b.Checksum ||
			m.Kind == walstream.KindLTX && m.Last && m.MaxTXID == b.TXID && m.Post == b.Checksum)
	// A file whose append was cut short after the base: its chunks follow
	// the base one by one, and the next marker abandons it.
	cutShort := m.Kind == walstream.KindLTX && !m.Last && m.MinTXID == b.TXID+1 && last == b.Seq+1+uint64(m.Chunk)
	if !atBase && !cutShort {
		return full("the stream's last message (seq %d, epoch %d, TXID %d) is not the recorded position (seq %d, epoch %d, TXID %d)",
			last, m.Epoch, m.MaxTXID, b.Seq, b.Epoch, b.TXID)
	}
	p := plan{base: b, pages: sums.Pages, tail: last}
	if b.Epoch == epoch {
		// Restarted within the epoch: Litestream's local files hold what
		// was captured after the base, shipped or not.
		if err := checkLocalLTX(db, b.TXID); err != nil {
			return full("Litestream's local state cannot resume from TXID %d: %v", b.TXID, err)
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

// checkLocalLTX checks that Litestream's L0 directory holds every file from
// TXID from to its newest.
func checkLocalLTX(db *litestream.DB, from ltx.TXID) error {
	entries, err := os.ReadDir(db.LTXLevelDir(0))
	if err != nil {
		return err
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
		return fmt.Errorf("its newest file is TXID %d", newest)
	}
	for txid := from; txid <= newest; txid++ {
		if !have[txid] {
			return fmt.Errorf("file of TXID %d is missing", txid)
		}
	}
	return nil
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

package walship

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/convex-cluster-manager/ccm/shared/replica"
)

// ErrBusy means writes kept coming while the database was read: it could
// not be tied to a shipped position.
var ErrBusy = errors.New("the database changed while it was read")

// verifyAttempts bounds the reads Verify tries while writes keep coming.
const verifyAttempts = 3

// Verify reads the whole database as a reader sees it, between two
// flushes that found nothing new to ship (so what it read is exactly the
// shipped position), and compares it with the page sums recorded for that
// position. It fails with ErrBusy when every attempt saw a commit.
func (s *Shipper) Verify(ctx context.Context) (replica.Verification, error) {
	var readErr error
	for range verifyAttempts {
		before, err := s.Flush(ctx)
		if err != nil {
			return replica.Verification{}, err
		}
		start := time.Now()
		got, err := replica.DatabasePageSums(ctx, s.db.Path())
		if err != nil {
			return replica.Verification{}, err
		}
		took := time.Since(start)
		after, err := s.Flush(ctx)
		if err != nil {
			return replica.Verification{}, err
		}
		if after != before {
			continue
		}
		rec, err := replica.ReadSums(s.client.sumsPath)
		if err != nil {
			readErr = fmt.Errorf("page sums of the shipped position: %w", err)
			continue
		}
		// Nothing shipped in this epoch yet (after 0): the database is
		// still at the base it continued or resumed from.
		if after != 0 && rec.Base.TXID != after {
			continue // recorded after the second flush returned: read again
		}
		b := rec.Base
		pos := replica.Position{Epoch: b.Epoch, TXID: b.TXID, Seq: b.Seq, Checksum: b.Checksum, PageSize: rec.Pages.PageSize(), Bytes: b.End, Chain: b.Chain}
		return replica.Verification{Position: pos, Check: replica.Compare(&rec.Pages, &got), ElapsedMs: took.Milliseconds()}, nil
	}
	if readErr != nil {
		return replica.Verification{}, readErr
	}
	return replica.Verification{}, fmt.Errorf("%w (%d attempts): stop the writes to verify the leader", ErrBusy, verifyAttempts)
}

// verify verifies the database being shipped, logs and records the outcome.
func (d *Daemon) verify(ctx context.Context) (replica.Verification, error) {
	s := d.shipper()
	if s == nil {
		return replica.Verification{}, errNotShipping
	}
	v, err := s.Verify(ctx)
	if err != nil {
		return v, err
	}
	d.verified.Record(v)
	if !v.Consistent() {
		d.log.Error("the leader's database differs from what it shipped", "epoch", v.Position.Epoch, "txid", v.Position.TXID, "check", v.Check.String())
		return v, nil
	}
	d.log.Info("database verified against what was shipped", "epoch", v.Position.Epoch, "txid", v.Position.TXID, "pages", v.Pages, "elapsed_ms", v.ElapsedMs)
	return v, nil
}

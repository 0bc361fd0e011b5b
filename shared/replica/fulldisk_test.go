package replica_test

import (
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/shared/replica"
)

// TestApplierOnAFullDisk applies a stream of files, some of several
// chunks, to a shadow on a 64 MiB file system that a ballast file fills at
// random moments, leaving a random few KiB free: every write of the
// applier (journal, apply record, pages, position, page sums) meets a full
// disk somewhere. Each failure must be an I/O error, never a refusal; once
// space is freed the applier continues from Consumed (after reopening the
// shadow when it says ErrInterrupted, as ccm-walapply does), and the
// shadow ends equal to the leader. The chaos campaign found a full disk
// turning into a gap, then a diverged shadow.
func TestApplierOnAFullDisk(t *testing.T) {
	d := newDisk(t)
	path := filepath.Join(d.dir, "db.sqlite3")
	ballast := filepath.Join(d.dir, "ballast")
	fill := func(leave int64) {
		var st syscall.Statfs_t
		require.NoError(t, syscall.Statfs(d.dir, &st))
		free := int64(st.Bfree) * st.Bsize // root writes into the reserved blocks too
		f, err := os.OpenFile(ballast, os.O_RDWR|os.O_CREATE, 0o600)
		require.NoError(t, err)
		defer f.Close()
		fi, _ := f.Stat()
		if n := fi.Size() + free - leave; n > fi.Size() {
			if err := syscall.Fallocate(int(f.Fd()), 0, 0, n); err != nil && !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
		}
	}
	free := func() { require.NoError(t, os.RemoveAll(ballast)) }

	type msg struct {
		h    nats.Header
		data []byte
	}
	db := &fakeDB{pages: map[uint32][]byte{}}
	msgs := []msg{{h: marker(2)}} // sequence 1
	rng := rand.New(rand.NewPCG(7, 8))
	for i := range 80 {
		writes := map[uint32]byte{}
		size := uint32(len(db.pages))
		n := 1 + rng.IntN(8)
		if i == 0 {
			n, size = 0, 400
			for p := uint32(1); p <= size; p++ {
				writes[p] = 'a'
			}
		}
		grow := 8 // in 8 writes, one appends a page
		if i%4 == 1 {
			n, grow = 300+rng.IntN(300), 2 // over 1 MiB, several chunks, the database growing as much
		}
		for range n {
			if rng.IntN(grow) == 0 {
				size++ // the database grows
				writes[size] = byte(rng.Uint32())
			} else {
				writes[1+uint32(rng.IntN(int(size)))] = byte(rng.Uint32())
			}
		}
		data, m := db.commit(t, 2, i == 0, writes)
		chunks := split(data)
		for c, b := range chunks {
			m.Chunk, m.Last = c, c == len(chunks)-1
			msgs = append(msgs, msg{h: m.Header(), data: b})
		}
	}

	open := func() (*replica.Shadow, *replica.Applier, error) {
		sh, err := replica.OpenShadow(path)
		if err != nil {
			return nil, nil, err
		}
		ap, err := replica.NewApplier(sh)
		if err != nil {
			sh.Close()
			return nil, nil, err
		}
		return sh, ap, nil
	}
	sh, ap, err := open()
	require.NoError(t, err)
	t.Cleanup(func() { ap.Close(); sh.Close() }) // before the unmount
	failures, reopened := 0, 0
	for ap.Consumed() < uint64(len(msgs)) {
		seq := ap.Consumed() + 1
		if rng.IntN(2) == 0 {
			// Sometimes room for the journal but not for the pages it
			// adds to the database, or for the records after them.
			size := len(msgs[seq-1].data)
			fill(int64(size/2 + rng.IntN(size+64<<10)))
		}
		err := ap.Handle(seq, msgs[seq-1].h, msgs[seq-1].data)
		if err == nil {
			continue
		}
		failures++
		for _, refusal := range []error{replica.ErrCorrupt, replica.ErrGap, replica.ErrChecksum, replica.ErrStaleEpoch, replica.ErrDiverged} {
			if errors.Is(err, refusal) {
				t.Fatalf("sequence %d on a full disk: %v, a refusal (replication would stop for good)", seq, err)
			}
		}
		if !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("sequence %d: %v, want an error of the full disk", seq, err)
		}
		free()
		if !errors.Is(err, replica.ErrInterrupted) {
			if ap.Consumed() >= seq {
				t.Fatalf("sequence %d failed (%v), yet the applier goes on after %d", seq, err, ap.Consumed())
			}
			continue
		}
		// Reopening finishes the apply: the file's last sequence is consumed.
		ap.Close()
		sh.Close()
		var oerr error
		sh, ap, oerr = open()
		require.NoError(t, oerr, "reopening after an interrupted apply")
		reopened++
	}
	free()
	t.Logf("%d messages, %d failed on the full disk, %d reopened after an interrupted apply", len(msgs), failures, reopened)
	if failures == 0 || reopened == 0 {
		t.Fatalf("the disk never interrupted an apply (%d failures, %d reopened): the test proves nothing", failures, reopened)
	}
	if p := ap.Position(); p.TXID != db.txid || p.Checksum != db.sum() {
		t.Fatalf("position %+v, want TXID %d checksum %s", p, db.txid, db.sum())
	}
	require.NoError(t, sh.Verify())
	ap.Close()
	sh.Close()
	sh, ap, err = open()
	require.NoError(t, err, "reopening at the end")
	require.Equal(t, uint64(len(msgs)), ap.Consumed())
}

package replica_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
	"github.com/superfly/ltx"

	"github.com/convex-cluster-manager/ccm/shared/replica"
	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

const pageSize = 4096

// fakeDB builds LTX files the way walship ships them: Litestream-style
// files without checksums, with the database checksum before and after
// carried in the message headers.
type fakeDB struct {
	pages map[uint32][]byte
	txid  ltx.TXID
}

func (d *fakeDB) sum() ltx.Checksum {
	var s ltx.Checksum
	for pgno, data := range d.pages {
		s = ltx.ChecksumFlag | (s ^ ltx.ChecksumPage(pgno, data))
	}
	return s
}

// commit writes pages (pgno -> fill byte) and returns the LTX file and its message meta.
func (d *fakeDB) commit(t *testing.T, epoch uint64, snapshot bool, writes map[uint32]byte) ([]byte, walstream.Meta) {
	t.Helper()
	pre := d.sum()
	if snapshot {
		d.txid = 0
		pre = 0
	}
	for pgno, fill := range writes {
		d.pages[pgno] = page(pgno, fill)
	}
	d.txid++
	var buf bytes.Buffer
	enc, _ := ltx.NewEncoder(&buf)
	commit := uint32(len(d.pages))
	if err := enc.EncodeHeader(ltx.Header{Version: ltx.Version, Flags: ltx.HeaderFlagNoChecksum, PageSize: pageSize,
		Commit: commit, MinTXID: d.txid, MaxTXID: d.txid, Timestamp: time.Now().UnixMilli()}); err != nil {
		t.Fatal(err)
	}
	for pgno := uint32(1); pgno <= commit; pgno++ {
		if _, ok := writes[pgno]; ok || snapshot {
			require.NoError(t, enc.EncodePage(ltx.PageHeader{Pgno: pgno}, d.pages[pgno]))
		}
	}
	require.NoError(t, enc.Close())
	return buf.Bytes(), walstream.Meta{Kind: walstream.KindLTX, Epoch: epoch, Node: "leader", MinTXID: d.txid, MaxTXID: d.txid,
		Pre: pre, Post: d.sum(), Last: true, Captured: time.Now()}
}

// page returns incompressible page content determined by pgno and fill.
func page(pgno uint32, fill byte) []byte {
	rng := rand.New(rand.NewPCG(uint64(pgno), uint64(fill)))
	b := make([]byte, pageSize)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func marker(epoch uint64) nats.Header {
	return walstream.Meta{Kind: walstream.KindMarker, Epoch: epoch, Node: "leader"}.Header()
}

// base returns an applier at epoch 2 that applied a snapshot and one change
// (sequences 1-3), with the fake leader database it follows.
func base(t *testing.T) (*replica.Applier, *replica.Shadow, *fakeDB) {
	t.Helper()
	sh, err := replica.OpenShadow(filepath.Join(t.TempDir(), "db.sqlite3"))
	require.NoError(t, err)
	t.Cleanup(func() { sh.Close() })
	ap, err := replica.NewApplier(sh)
	require.NoError(t, err)
	db := &fakeDB{pages: map[uint32][]byte{}}
	must(t, ap.Handle(1, marker(2), nil))
	data, m := db.commit(t, 2, true, map[uint32]byte{1: 'a', 2: 'b', 3: 'c'})
	must(t, ap.Handle(2, m.Header(), data))
	data, m = db.commit(t, 2, false, map[uint32]byte{2: 'B', 4: 'd'})
	must(t, ap.Handle(3, m.Header(), data))
	if p := ap.Position(); p.TXID != 2 || p.Seq != 3 || p.Checksum != db.sum() {
		t.Fatalf("base position %+v, want TXID 2 seq 3 checksum %s", p, db.sum())
	}
	return ap, sh, db
}

// split cuts an LTX file into WAL stream chunks, as walship sends it.
func split(data []byte) [][]byte {
	var chunks [][]byte
	for len(data) > 0 {
		n := min(len(data), walstream.ChunkSize)
		chunks = append(chunks, data[:n])
		data = data[n:]
	}
	return chunks
}

func must(t *testing.T, err error) {
	t.Helper()
	require.NoError(t, err)
}

func TestApplierRefuses(t *testing.T) {
	tests := []struct {
		name string
		msg  func(t *testing.T, db *fakeDB) (uint64, nats.Header, []byte)
		want error
	}{
		{"corrupted LTX bytes", func(t *testing.T, db *fakeDB) (uint64, nats.Header, []byte) {
			data, m := db.commit(t, 2, false, map[uint32]byte{1: 'z'})
			data[len(data)/2] ^= 0xff
			return 4, m.Header(), data
		}, replica.ErrCorrupt},
		{"corrupted page index", func(t *testing.T, db *fakeDB) (uint64, nats.Header, []byte) {
			data, m := db.commit(t, 2, false, map[uint32]byte{1: 'z'})
			data[len(data)-ltx.TrailerSize-10] ^= 0x01 // covered only by the file checksum
			return 4, m.Header(), data
		}, replica.ErrCorrupt},
		{"corrupted file checksum", func(t *testing.T, db *fakeDB) (uint64, nats.Header, []byte) {
			data, m := db.commit(t, 2, false, map[uint32]byte{1: 'z'})
			data[len(data)-1] ^= 0x01
			return 4, m.Header(), data
		}, replica.ErrCorrupt},
		{"truncated LTX", func(t *testing.T, db *fakeDB) (uint64, nats.Header, []byte) {
			data, m := db.commit(t, 2, false, map[uint32]byte{1: 'z'})
			return 4, m.Header(), data[:len(data)-20]
		}, replica.ErrCorrupt},
		{"garbage header", func(t *testing.T, db *fakeDB) (uint64, nats.Header, []byte) {
			h := nats.Header{}
			h.Set(walstream.HdrKind, "ltx")
			h.Set(walstream.HdrEpoch, "two")
			return 4, h, []byte("x")
		}, replica.ErrCorrupt},
		{"TXID gap", func(t *testing.T, db *fakeDB) (uint64, nats.Header, []byte) {
			db.commit(t, 2, false, map[uint32]byte{1: 'y'}) // TXID 3 never sent
			data, m := db.commit(t, 2, false, map[uint32]byte{1: 'z'})
			return 4, m.Header(), data
		}, replica.ErrGap},
		{"sequence gap", func(t *testing.T, db *fakeDB) (uint64, nats.Header, []byte) {
			data, m := db.commit(t, 2, false, map[uint32]byte{1: 'z'})
			return 6, m.Header(), data
		}, replica.ErrGap},
		{"missing first chunk", func(t *testing.T, db *fakeDB) (uint64, nats.Header, []byte) {
			data, m := db.commit(t, 2, false, map[uint32]byte{1: 'z'})
			m.Chunk = 1
			return 4, m.Header(), data
		}, replica.ErrGap},
		{"pre-apply checksum mismatch", func(t *testing.T, db *fakeDB) (uint64, nats.Header, []byte) {
			data, m := db.commit(t, 2, false, map[uint32]byte{1: 'z'})
			m.Pre ^= 0x10
			return 4, m.Header(), data
		}, replica.ErrChecksum},
		{"post-apply checksum mismatch", func(t *testing.T, db *fakeDB) (uint64, nats.Header, []byte) {
			data, m := db.commit(t, 2, false, map[uint32]byte{1: 'z'})
			m.Post ^= 0x10
			return 4, m.Header(), data
		}, replica.ErrChecksum},
		{"older epoch", func(t *testing.T, db *fakeDB) (uint64, nats.Header, []byte) {
			data, m := db.commit(t, 1, false, map[uint32]byte{1: 'z'})
			return 4, m.Header(), data
		}, replica.ErrStaleEpoch},
		{"older epoch marker", func(t *testing.T, db *fakeDB) (uint64, nats.Header, []byte) {
			return 4, marker(1), nil
		}, replica.ErrStaleEpoch},
		{"newer epoch without its marker", func(t *testing.T, db *fakeDB) (uint64, nats.Header, []byte) {
			data, m := db.commit(t, 3, true, map[uint32]byte{1: 'z'})
			return 4, m.Header(), data
		}, replica.ErrGap},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ap, sh, db := base(t)
			before := ap.Position()
			content, _ := os.ReadFile(sh.Path())
			seq, h, data := tt.msg(t, db)
			err := ap.Handle(seq, h, data)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Handle = %v, want %v", err, tt.want)
			}
			t.Logf("refused: %v", err)
			if ap.Position() != before {
				t.Fatalf("position moved from %+v to %+v", before, ap.Position())
			}
			after, _ := os.ReadFile(sh.Path())
			if !bytes.Equal(content, after) {
				t.Fatal("shadow database changed by a refused message")
			}
		})
	}
}

func TestApplierNewEpochSnapshotOfSameContentWritesNothing(t *testing.T) {
	ap, sh, db := base(t)
	must(t, ap.Handle(4, marker(5), nil))
	if p := ap.Position(); p.Epoch != 5 || p.TXID != 0 {
		t.Fatalf("after marker: %+v", p)
	}
	data, m := db.commit(t, 5, true, nil)
	st, _ := os.Stat(sh.Path())
	must(t, ap.Handle(5, m.Header(), data))
	st2, _ := os.Stat(sh.Path())
	if p := ap.Position(); p.Epoch != 5 || p.TXID != 1 || p.Checksum != db.sum() {
		t.Fatalf("after snapshot: %+v", p)
	}
	if !st2.ModTime().Equal(st.ModTime()) {
		t.Fatal("identical snapshot rewrote the shadow")
	}
	data, m = db.commit(t, 5, false, map[uint32]byte{5: 'e'})
	must(t, ap.Handle(6, m.Header(), data))
	require.NoError(t, sh.Verify())
}

func TestApplierChunkedFileAndRestart(t *testing.T) {
	ap, sh, db := base(t)
	writes := map[uint32]byte{}
	for p := uint32(1); p <= 400; p++ { // ~1.6 MB: several chunks
		writes[p] = byte(p)
	}
	data, m := db.commit(t, 2, false, writes)
	chunks := split(data)
	if len(chunks) < 2 {
		t.Fatalf("want a multi-chunk file, got %d chunk", len(chunks))
	}
	seq := uint64(4)
	for i, c := range chunks[:len(chunks)-1] {
		m.Chunk, m.Last = i, false
		must(t, ap.Handle(seq, m.Header(), c))
		seq++
	}
	// Restart before the last chunk: the file is reassembled from its first chunk.
	ap.Close()
	path := sh.Path()
	sh.Close()
	sh2, err := replica.OpenShadow(path)
	must(t, err)
	defer sh2.Close()
	ap2, err := replica.NewApplier(sh2)
	must(t, err)
	if ap2.Consumed() != 3 {
		t.Fatalf("restarted applier resumes after seq %d, want 3", ap2.Consumed())
	}
	for i, c := range chunks {
		m.Chunk, m.Last = i, i == len(chunks)-1
		must(t, ap2.Handle(uint64(4+i), m.Header(), c))
		// Between chunks the page sums predict the file: no verification then.
		require.Equal(t, !m.Last, ap2.Assembling(), "after chunk %d of %d", i+1, len(chunks))
	}
	if p := ap2.Position(); p.TXID != 3 || p.Checksum != db.sum() {
		t.Fatalf("position %+v, want TXID 3 checksum %s", p, db.sum())
	}
	must(t, sh2.Verify())
}

// TestApplierRecoversInterruptedApply simulates a crash after some pages
// of a verified file were written but before the position was recorded:
// the next start re-applies the journal and ends at the file's position.
func TestApplierRecoversInterruptedApply(t *testing.T) {
	ap, sh, db := base(t)
	data, m := db.commit(t, 2, false, map[uint32]byte{1: 'x', 3: 'y', 5: 'z'})
	next := replica.Position{Epoch: 2, TXID: m.MaxTXID, Seq: 4, Checksum: m.Post, Captured: m.Captured}
	// What applyJournal leaves behind when it dies inside Shadow.Apply:
	// the journal, the record of the apply in progress, and a half-written page.
	path := sh.Path()
	must(t, os.WriteFile(path+".ccm-incoming", data, 0o640))
	rec, _ := json.Marshal(next)
	must(t, os.WriteFile(path+".ccm-incoming.apply", rec, 0o640))
	ap.Close()
	sh.Close()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	must(t, err)
	f.WriteAt(page(1, 'x')[:1000], 0)
	f.Close()

	sh2, err := replica.OpenShadow(path)
	must(t, err)
	defer sh2.Close()
	ap2, err := replica.NewApplier(sh2)
	must(t, err)
	if p := ap2.Position(); p.TXID != m.MaxTXID || p.Seq != 4 || p.Checksum != db.sum() {
		t.Fatalf("after recovery %+v, want TXID %d seq 4 checksum %s", p, m.MaxTXID, db.sum())
	}
	if ap2.Consumed() != 4 {
		t.Fatalf("after recovery the applier resumes after seq %d, want 4 (the recovered file's last)", ap2.Consumed())
	}
	must(t, sh2.Verify())
	// The stream continues after the recovered file with no gap.
	data, m = db.commit(t, 2, false, map[uint32]byte{2: 'q'})
	must(t, ap2.Handle(5, m.Header(), data))
	if _, err := os.Stat(path + ".ccm-incoming.apply"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("apply record left behind: %v", err)
	}
	// And a shadow damaged without a journal to repair it is refused.
	sh2.Close()
	f, _ = os.OpenFile(path, os.O_RDWR, 0)
	f.WriteAt([]byte("damage"), 100)
	f.Close()
	sh3, err := replica.OpenShadow(path)
	must(t, err)
	defer sh3.Close()
	if _, err := replica.NewApplier(sh3); !errors.Is(err, replica.ErrDiverged) {
		t.Fatalf("damaged shadow: err = %v, want ErrDiverged", err)
	}
}

// TestApplierAbandonedFileLeavesPageSums: the page sums are predicted
// while a file's chunks arrive; a file abandoned before its last chunk
// (a new epoch's marker, or the applier closed for a handover) must leave
// them at the shadow's content.
func TestApplierAbandonedFileLeavesPageSums(t *testing.T) {
	chunked := func(t *testing.T, db *fakeDB) ([][]byte, walstream.Meta) {
		writes := map[uint32]byte{}
		for p := uint32(1); p <= 400; p++ {
			writes[p] = byte(p + 7)
		}
		data, m := db.commit(t, 2, false, writes)
		return split(data), m
	}
	t.Run("new epoch", func(t *testing.T) {
		ap, _, db := base(t)
		before := *db
		before.pages = maps.Clone(db.pages)
		chunks, m := chunked(t, db)
		m.Chunk, m.Last = 0, false
		must(t, ap.Handle(4, m.Header(), chunks[0]))
		// The writer died mid-file; the next one continues from the
		// shadow's position and commits again.
		pos := ap.Position()
		next := walstream.Meta{Kind: walstream.KindMarker, Epoch: 3, Node: "other", Base: &walstream.Base{Epoch: 2, TXID: pos.TXID, Checksum: pos.Checksum, Seq: pos.Seq}}
		must(t, ap.Handle(5, next.Header(), nil))
		data, m := before.commit(t, 3, false, map[uint32]byte{3: 'x'})
		must(t, ap.Handle(6, m.Header(), data))
		if p := ap.Position(); p.TXID != 3 || p.Checksum != before.sum() {
			t.Fatalf("position %+v, want TXID 3 checksum %s", p, before.sum())
		}
	})
	t.Run("closed for a handover", func(t *testing.T) {
		ap, sh, db := base(t)
		pos := ap.Position()
		chunks, m := chunked(t, db)
		m.Chunk, m.Last = 0, false
		must(t, ap.Handle(4, m.Header(), chunks[0]))
		ap.Close()
		must(t, sh.WriteSums())
		s, err := replica.ReadSums(replica.SumsPath(sh.Path()))
		must(t, err)
		if s.Pages.Checksum() != pos.Checksum || s.Base.Checksum != pos.Checksum {
			t.Fatalf("handed-over page sums %s (base %s), the shadow's checksum is %s", s.Pages.Checksum(), s.Base.Checksum, pos.Checksum)
		}
	})
}

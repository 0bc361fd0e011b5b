package replica_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/shared/replica"
	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

// TestSumsFileSurvivesTornUpdates: an update cut short before it reached
// the page-sums file is finished from its redo log; a torn redo log is
// ignored and the file's previous state is read.
func TestSumsFileSurvivesTornUpdates(t *testing.T) {
	db := &fakeDB{pages: map[uint32][]byte{}}
	var p replica.PageSums
	data, _ := db.commit(t, 1, true, map[uint32]byte{1: 'a', 2: 'b', 3: 'c'})
	if _, _, err := p.Apply(bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "db.sqlite3.ccm-pagesums")
	b1 := walstream.Base{Epoch: 1, TXID: 1, Checksum: p.Checksum(), Seq: 2, End: 100, Chain: 1}
	f, err := replica.CreateSums(path, b1, &p)
	must(t, err)
	defer f.Close()
	before, err := os.ReadFile(path)
	must(t, err)

	data, _ = db.commit(t, 1, false, map[uint32]byte{2: 'B', 4: 'd'}) // grows to 4 pages
	if _, _, err := p.Apply(bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	b2 := walstream.Base{Epoch: 1, TXID: 2, Checksum: p.Checksum(), Seq: 3, End: 200, Chain: 1}
	must(t, f.Update(b2, &p))
	read := func() replica.Sums {
		t.Helper()
		s, err := replica.ReadSums(path)
		require.NoError(t, err)
		return s
	}
	if s := read(); s.Base != b2 || s.Pages.Checksum() != db.sum() {
		t.Fatalf("after the update: %+v, want %+v", s.Base, b2)
	}
	// Killed after the redo log, before any write to the file.
	must(t, os.WriteFile(path, before, 0o640))
	if s := read(); s.Base != b2 || s.Pages.Checksum() != db.sum() {
		t.Fatalf("update cut short: read %+v, want it finished to %+v", s.Base, b2)
	}
	// A torn redo log is ignored: the file's own state stands.
	log, err := os.ReadFile(path + ".log")
	must(t, err)
	must(t, os.WriteFile(path+".log", log[:len(log)-3], 0o640))
	if s := read(); s.Base != b1 {
		t.Fatalf("torn redo log: read %+v, want the file's %+v", s.Base, b1)
	}
	// And a file that adds up to nothing is refused.
	before[len(before)-1] ^= 0xff
	must(t, os.WriteFile(path, before, 0o640))
	if _, err := replica.ReadSums(path); err == nil {
		t.Fatal("a damaged page-sums file was read")
	}
}

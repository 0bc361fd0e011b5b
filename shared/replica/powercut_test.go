package replica_test

import (
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/shared/replica"
)

// disk is an ext4 file system on a loop device backed by an image file. A
// copy of the image taken at an instant is what a power cut at that
// instant leaves: what the file system wrote to its device, not what
// waits in its page cache (ext4 commits its journal every 5 s, and writes
// data back later still, unless asked by fsync).
type disk struct {
	img, dir string
}

// newDisk makes and mounts a file system of 64 MiB, unmounted when the
// test ends.
func newDisk(t *testing.T) *disk {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("power cuts are simulated with loop-mounted file systems: needs root")
	}
	tmp := t.TempDir()
	d := &disk{img: filepath.Join(tmp, "disk.img"), dir: filepath.Join(tmp, "mnt")}
	require.NoError(t, os.WriteFile(d.img, nil, 0o600))
	require.NoError(t, os.Truncate(d.img, 64<<20))
	run(t, "mkfs.ext4", "-q", "-F", d.img)
	mount(t, d.img, d.dir)
	return d
}

// cut returns the directory of a copy of the file system as a power cut
// now would leave it, its journal replayed.
func (d *disk) cut(t *testing.T, name string) string {
	t.Helper()
	img := filepath.Join(filepath.Dir(d.img), name+".img")
	src, err := os.Open(d.img)
	require.NoError(t, err)
	defer src.Close()
	dst, err := os.Create(img)
	require.NoError(t, err)
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	require.NoError(t, dst.Close())
	dir := filepath.Join(filepath.Dir(d.img), name)
	mount(t, img, dir)
	return dir
}

func mount(t *testing.T, img, dir string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(dir, 0o755))
	run(t, "mount", "-o", "loop", img, dir)
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, out)
	}
}

// TestApplierSurvivesPowerCuts applies files to a shadow on a real file
// system and cuts the power right after each apply returns: the copy opens
// at the applied position (an apply that returned is durable: the journal,
// the apply record, the pages, the position and the record's removal),
// its content matching the position's checksum. An apply record that
// came back, or a position renamed in a directory never synced, made the
// copy fail to open or diverge.
func TestApplierSurvivesPowerCuts(t *testing.T) {
	d := newDisk(t)
	sh, err := replica.OpenShadow(filepath.Join(d.dir, "db.sqlite3"))
	must(t, err)
	defer sh.Close()
	ap, err := replica.NewApplier(sh)
	must(t, err)
	defer ap.Close()
	db := &fakeDB{pages: map[uint32][]byte{}}
	must(t, ap.Handle(1, marker(2), nil))
	first := map[uint32]byte{}
	for pgno := uint32(1); pgno <= 512; pgno++ {
		first[pgno] = 'a'
	}
	data, m := db.commit(t, 2, true, first)
	must(t, ap.Handle(2, m.Header(), data))

	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 8 {
		writes := map[uint32]byte{}
		for range 1 + rng.IntN(64) {
			writes[1+uint32(rng.IntN(512))] = byte('b' + i)
		}
		data, m := db.commit(t, 2, false, writes)
		seq := uint64(3 + i)
		must(t, ap.Handle(seq, m.Header(), data))

		dir := d.cut(t, fmt.Sprintf("cut%d", i))
		sh2, err := replica.OpenShadow(filepath.Join(dir, "db.sqlite3"))
		require.NoErrorf(t, err, "cut after applying TXID %d: open shadow", m.MaxTXID)
		ap2, err := replica.NewApplier(sh2)
		if err != nil {
			sh2.Close()
			t.Fatalf("cut after applying TXID %d: %v", m.MaxTXID, err)
		}
		p := ap2.Position()
		ap2.Close()
		sh2.Close()
		if p.TXID != m.MaxTXID || p.Seq != seq || p.Checksum != db.sum() {
			t.Fatalf("cut after applying TXID %d (seq %d, checksum %s): the copy is at TXID %d seq %d checksum %s", m.MaxTXID, seq, db.sum(), p.TXID, p.Seq, p.Checksum)
		}
	}
}

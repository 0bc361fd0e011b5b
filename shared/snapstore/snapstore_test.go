package snapstore_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"github.com/superfly/ltx"

	"github.com/convex-cluster-manager/ccm/shared/natstest"
	"github.com/convex-cluster-manager/ccm/shared/snapstore"
)

const pageSize = 4096

// image writes a database image of pages random pages and returns its path,
// contents and rolling checksum.
func image(t *testing.T, pages int, seed uint64) (string, []byte, ltx.Checksum) {
	t.Helper()
	b := make([]byte, pages*pageSize)
	rng := rand.New(rand.NewPCG(seed, seed))
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	path := filepath.Join(t.TempDir(), "db")
	require.NoError(t, os.WriteFile(path, b, 0o640))
	sum, n, err := snapstore.Checksum(bytes.NewReader(b), pageSize)
	if err != nil || n != int64(len(b)) {
		t.Fatalf("checksum: %v (%d bytes)", err, n)
	}
	return path, b, sum
}

// TestPutListDownload stores snapshots with retention, lists them in stream
// order (skipping objects that are not snapshots), and downloads the newest
// verified; a snapshot whose contents do not match its metadata is refused
// and leaves no file.
func TestPutListDownload(t *testing.T) {
	js, err := jetstream.New(natstest.Connect(t, natstest.Server(t).ClientURL()))
	require.NoError(t, err)
	ctx := context.Background()
	st, err := snapstore.Open(ctx, js, "dc", 1)
	require.NoError(t, err)
	if _, err := st.Newest(ctx); !errors.Is(err, snapstore.ErrNone) {
		t.Fatalf("newest of none: %v, want ErrNone", err)
	}
	var last []byte
	var want snapstore.Snapshot
	for i, seq := range []uint64{5, 40, 12, 300} { // out of order: listed by sequence
		path, data, sum := image(t, 100+i*150, uint64(i+1)) // up to 2.1 MiB: several chunks
		s, err := st.Put(ctx, path, snapstore.Snapshot{Epoch: 2, TXID: ltx.TXID(seq), Seq: seq, Checksum: sum, PageSize: pageSize,
			Node: "n2", Captured: time.UnixMilli(1_700_000_000_000 + int64(seq)), Bytes: int64(seq) * 10, Chain: 2}, 3)
		require.NoErrorf(t, err, "put seq %d", seq)
		if s.Size != int64(len(data)) {
			t.Fatalf("put seq %d: size %d, want %d", seq, s.Size, len(data))
		}
		if seq == 300 {
			last, want = data, s
		}
	}
	obs, err := js.ObjectStore(ctx, snapstore.Bucket("dc"))
	require.NoError(t, err)
	if _, err := obs.PutString(ctx, "not-a-snapshot", "hello"); err != nil {
		t.Fatal(err)
	}
	all, err := st.List(ctx)
	require.NoError(t, err)
	var seqs []uint64
	for _, s := range all {
		seqs = append(seqs, s.Seq)
	}
	// Retention kept the three newest by sequence when the fourth was
	// put (5 went), and the stray object is skipped.
	if len(seqs) != 3 || seqs[0] != 12 || seqs[1] != 40 || seqs[2] != 300 {
		t.Fatalf("listed sequences %v, want [12 40 300]", seqs)
	}
	newest, err := st.Newest(ctx)
	if err != nil || newest.Seq != 300 || newest.Checksum != want.Checksum || newest.Bytes != 3000 || newest.Chain != 2 || !newest.Captured.Equal(want.Captured) {
		t.Fatalf("newest %+v (%v), want %+v", newest, err, want)
	}

	dir := t.TempDir()
	dst := filepath.Join(dir, "shadow.db")
	var progress int64
	require.NoError(t, st.Download(ctx, newest, dst, func(n int64) { progress = n }))
	if got, err := os.ReadFile(dst); err != nil || !bytes.Equal(got, last) || progress != int64(len(last)) {
		t.Fatalf("downloaded %d bytes (equal %v, %v), last progress %d, want %d", len(got), bytes.Equal(got, last), err, progress, len(last))
	}

	bad := newest
	bad.Checksum ^= 1
	other := filepath.Join(dir, "other.db")
	if err := st.Download(ctx, bad, other, nil); !errors.Is(err, snapstore.ErrCorrupt) || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("download with a wrong checksum: %v, want ErrCorrupt naming the checksum", err)
	}
	if _, err := os.Stat(other); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a refused download left %s: %v", other, err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("after a refused download the directory holds %d entries, want the first download only", len(entries))
	}
}

package storage_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/services/cli"
	et "github.com/convex-cluster-manager/ccm/services/elector/electortest"
	"github.com/convex-cluster-manager/ccm/services/storage"
	"github.com/convex-cluster-manager/ccm/shared/config"
	"github.com/convex-cluster-manager/ccm/shared/daemon/daemontest"
	"github.com/convex-cluster-manager/ccm/shared/filestore"
	"github.com/convex-cluster-manager/ccm/shared/natstest"
	"github.com/convex-cluster-manager/ccm/shared/schema"
	"github.com/convex-cluster-manager/ccm/shared/waitfor"
)

func nodeConfig(dir, id, url string) config.Config {
	c := et.Config("dc", id, url)
	c.Backend.DataPath = filepath.Join(dir, id, "data")
	c.WAL.ReplicaPath = filepath.Join(dir, id, "replica")
	c.Storage.ReconcileIntervalMs = 2000
	c.Storage.SyncTimeoutMs = 60000
	return c
}

// file is what a tree holds at one path.
type file struct {
	sum  string
	mode fs.FileMode
}

// tree reads every regular file under root, failing on a partial
// download left visible (a temporary file outside a transfer is fine).
func tree(t *testing.T, root string) map[string]file {
	t.Helper()
	out := map[string]file{}
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasPrefix(d.Name(), filestore.TempPrefix) {
			return nil
		}
		sum, _, err := filestore.HashFile(p)
		if err != nil {
			return nil // removed meanwhile
		}
		info, _ := d.Info()
		r, _ := filepath.Rel(root, p)
		out[filepath.ToSlash(r)] = file{sum, info.Mode().Perm()}
		return nil
	})
	return out
}

func diff(a, b map[string]file) string {
	var d []string
	for p, f := range a {
		if g, ok := b[p]; !ok {
			d = append(d, "missing "+p)
		} else if g != f {
			d = append(d, fmt.Sprintf("differs %s (%v vs %v)", p, f, g))
		}
	}
	for p := range b {
		if _, ok := a[p]; !ok {
			d = append(d, "extra "+p)
		}
	}
	if len(d) > 5 {
		d = append(d[:5], fmt.Sprintf("and %d more", len(d)-5))
	}
	return strings.Join(d, "; ")
}

// waitSame waits until the mirror at b is byte-identical to the tree at a.
func waitSame(t *testing.T, a, b string, within time.Duration) {
	t.Helper()
	waitfor.Poll(t, within, 100*time.Millisecond, func() error {
		if d := diff(tree(t, a), tree(t, b)); d != "" {
			return fmt.Errorf("mirror %s differs from %s: %s", b, a, d)
		}
		return nil
	})
}

func write(t *testing.T, root, rel string, data []byte) {
	t.Helper()
	p := filepath.Join(root, rel)
	require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
	// Written beside the watched tree and renamed in, so that the capture
	// never sees a half-written file (which would store one more object,
	// kept for the GC grace, and throw off the tests' object counts).
	tmp, err := os.CreateTemp(filepath.Dir(root), "write-*")
	require.NoError(t, err)
	if _, err := tmp.Write(data); err != nil {
		t.Fatal(err)
	}
	require.NoError(t, tmp.Chmod(0o644))
	tmp.Close()
	require.NoError(t, os.Rename(tmp.Name(), p))
}

// writeRandom writes size pseudo-random bytes (incompressible) in chunks.
func writeRandom(t *testing.T, path string, size int64, seed uint64) {
	t.Helper()
	os.MkdirAll(filepath.Dir(path), 0o755)
	f, err := os.Create(path)
	require.NoError(t, err)
	r := rand.NewChaCha8([32]byte{byte(seed)})
	if _, err := io.CopyN(f, r, size); err != nil {
		t.Fatal(err)
	}
	require.NoError(t, f.Close())
}

func waitState(t *testing.T, d *storage.Daemon, state string, within time.Duration) schema.StorageStatus {
	t.Helper()
	var st schema.StorageStatus
	waitfor.Cond(t, within, func() error {
		st = d.Status().(schema.StorageStatus)
		if st.State != state {
			return fmt.Errorf("storage status %+v, want state %s", st, state)
		}
		return nil
	})
	return st
}

type cluster struct {
	srv    string
	dir    string
	c1, c2 config.Config
	n1, n2 *et.Node
	s1, s2 *daemontest.Running[*storage.Daemon]
	js     jetstream.JetStream
	proxy  *natstest.Proxy // n1's ccm-storage reaches NATS through it (startProxied)
}

// start runs electors and storage daemons for a leader n1 and a passive n2.
func start(t *testing.T) *cluster { return startCluster(t, false) }

// startProxied is start with n1's ccm-storage connected through c.proxy,
// which a test can cut.
func startProxied(t *testing.T) *cluster { return startCluster(t, true) }

func startCluster(t *testing.T, proxied bool) *cluster {
	srv := natstest.Server(t)
	c := &cluster{srv: srv.ClientURL(), dir: t.TempDir()}
	c.c1, c.c2 = nodeConfig(c.dir, "n1", c.srv), nodeConfig(c.dir, "n2", c.srv)
	c.n1 = et.Start(t, c.c1)
	et.WaitLeader(t, []*et.Node{c.n1}, 2*et.TTL)
	c.n2 = et.Start(t, c.c2)
	cs := c.c1
	if proxied {
		c.proxy = natstest.NewProxy(t, srv.Addr().String())
		cs.NATS.Servers = []string{c.proxy.URL()}
	}
	c.s1 = daemontest.Start[*storage.Daemon](t, storage.Spec(), cs)
	c.s2 = daemontest.Start[*storage.Daemon](t, storage.Spec(), c.c2)
	waitState(t, c.s1.D, schema.StorageCapturing, 20*time.Second)
	waitState(t, c.s2.D, schema.StorageSynced, 20*time.Second)
	js, err := jetstream.New(natstest.Connect(t, c.srv))
	require.NoError(t, err)
	c.js = js
	return c
}

// TestMirrorFollowsChanges writes, overwrites, deletes and renames files
// and directories on the leader, then thousands of small files: the
// passive's shadow tree is byte-identical after each step, and contents
// written twice are stored once.
func TestMirrorFollowsChanges(t *testing.T) {
	c := start(t)
	src, dst := c.c1.StorageDir(), c.c2.ShadowStorageDir()

	write(t, src, "modules/abc/index.js", []byte("export default 1"))
	write(t, src, "files/00/aa", bytes.Repeat([]byte("x"), 3<<20)) // several chunks
	write(t, src, "files/00/same-a", []byte("same contents"))
	write(t, src, "files/01/same-b", []byte("same contents"))
	os.Chmod(filepath.Join(src, "modules/abc/index.js"), 0o600)
	waitSame(t, src, dst, 10*time.Second)

	write(t, src, "modules/abc/index.js", []byte("export default 2"))
	os.Remove(filepath.Join(src, "files/00/aa"))
	os.MkdirAll(filepath.Join(src, "files/02"), 0o755)
	require.NoError(t, os.Rename(filepath.Join(src, "files/00/same-a"), filepath.Join(src, "files/02/renamed")))
	os.Rename(filepath.Join(src, "modules/abc"), filepath.Join(src, "modules/def"))
	waitSame(t, src, dst, 10*time.Second)

	for i := range 3000 {
		write(t, src, fmt.Sprintf("search/%02d/seg-%04d", i%30, i), []byte(fmt.Sprintf("segment %d", i)))
	}
	waitSame(t, src, dst, 60*time.Second)

	store, err := filestore.Lookup(context.Background(), c.js, "dc")
	require.NoError(t, err)
	sums := map[string]bool{}
	for _, f := range tree(t, src) {
		sums[f.sum] = true
	}
	waitObjects(t, store, len(sums)+2, 10*time.Second) // + the replaced index.js and the deleted aa, kept for gcGrace
	st := waitState(t, c.s2.D, schema.StorageSynced, 10*time.Second)
	if st.Files != len(tree(t, src)) || st.ManifestFiles != st.Files {
		t.Fatalf("mirror status %+v, want %d files of %d", st, len(tree(t, src)), st.ManifestFiles)
	}
}

func waitObjects(t *testing.T, store *filestore.Store, want int, within time.Duration) {
	t.Helper()
	waitfor.Poll(t, within, 100*time.Millisecond, func() error {
		objs, err := store.Objects(context.Background())
		require.NoError(t, err)
		if len(objs) != want {
			return fmt.Errorf("%d objects stored, want %d (one per distinct contents)", len(objs), want)
		}
		return nil
	})
}

// TestLargeFileAndRestartMidTransfer mirrors a 200 MB file and 500 small
// files to a passive that is stopped part-way: no partial file is ever
// visible, files complete before the stop are not fetched again, and the
// tree converges after the restart.
func TestLargeFileAndRestartMidTransfer(t *testing.T) {
	c := start(t)
	src, dst := c.c1.StorageDir(), c.c2.ShadowStorageDir()
	c.s2.Stop()
	for i := range 500 {
		write(t, src, fmt.Sprintf("files/small-%03d", i), []byte(strings.Repeat("s", i)))
	}
	writeRandom(t, filepath.Join(src, "exports/big.zip"), 200<<20, 1)
	want := tree(t, src)
	waitfor.Cond(t, 60*time.Second, func() error {
		if st := c.s1.D.Status().(schema.StorageStatus); st.Files != len(want) {
			return fmt.Errorf("leader published %+v, want %d files", st, len(want))
		}
		return nil
	})

	s2 := daemontest.Start[*storage.Daemon](t, storage.Spec(), c.c2)
	// Stop it while it is part-way: some files done, not all.
	waitfor.Poll(t, 60*time.Second, time.Millisecond, func() error {
		if n := len(tree(t, dst)); n <= 50 || n >= len(want) {
			return fmt.Errorf("never saw the mirror part-way: %d of %d files, want more than 50 and fewer than all", n, len(want))
		}
		return nil
	})
	s2.Stop()
	before := map[string]uint64{}
	for p, f := range tree(t, dst) {
		if want[p] != f {
			t.Fatalf("partial or wrong file visible after the stop: %s", p)
		}
		st, _ := os.Stat(filepath.Join(dst, p))
		before[p] = st.Sys().(*syscall.Stat_t).Ino
	}
	s2 = daemontest.Start[*storage.Daemon](t, storage.Spec(), c.c2)
	waitSame(t, src, dst, 120*time.Second)
	for p, ino := range before {
		st, _ := os.Stat(filepath.Join(dst, p))
		if st.Sys().(*syscall.Stat_t).Ino != ino {
			t.Fatalf("%s was fetched again after the restart", p)
		}
	}
	leftovers, _ := filepath.Glob(filepath.Join(dst, "*", filestore.TempPrefix+"*"))
	if len(leftovers) > 0 {
		t.Fatalf("temporary files left after the restart: %v", leftovers)
	}
	waitState(t, s2.D, schema.StorageSynced, 10*time.Second)
}

// TestCorruptObjectRefused replaces a file's stored contents with other
// bytes: the mirror refuses it (nothing at the path, status failed naming
// it) and fetches it once the right contents are back.
func TestCorruptObjectRefused(t *testing.T) {
	c := start(t)
	src, dst := c.c1.StorageDir(), c.c2.ShadowStorageDir()
	c.s2.Stop()
	good := []byte("the real module source")
	write(t, src, "modules/m.js", good)
	sum := sha256.Sum256(good)
	name := hex.EncodeToString(sum[:])
	obs, err := c.js.ObjectStore(context.Background(), filestore.BlobsBucket("dc"))
	require.NoError(t, err)
	waitfor.Cond(t, 10*time.Second, func() error {
		if _, err := obs.GetInfo(context.Background(), name); err != nil {
			return fmt.Errorf("leader did not publish the file: %v", err)
		}
		if st := c.s1.D.Status().(schema.StorageStatus); st.Files != 1 {
			return fmt.Errorf("leader did not publish the file: status %+v, want 1 file", st)
		}
		return nil
	})
	if _, err := obs.PutBytes(context.Background(), name, []byte("tampered module source")); err != nil {
		t.Fatal(err)
	}
	s2 := daemontest.Start[*storage.Daemon](t, storage.Spec(), c.c2)
	st := waitState(t, s2.D, schema.StorageFailed, 10*time.Second)
	if !strings.Contains(st.Error, "modules/m.js") || !strings.Contains(st.Error, "corrupt") {
		t.Fatalf("failure does not name the file and the corruption: %q", st.Error)
	}
	if _, err := os.Stat(filepath.Join(dst, "modules/m.js")); err == nil {
		t.Fatal("a corrupt file was put in place")
	}
	if _, err := obs.PutBytes(context.Background(), name, good); err != nil {
		t.Fatal(err)
	}
	waitSame(t, src, dst, 15*time.Second)
	waitState(t, s2.D, schema.StorageSynced, 10*time.Second)
}

// TestPromotionInstallsStorage switches over to the passive: its promotion
// moves the mirrored tree into its data path before it serves, it then
// captures, and the old leader mirrors the new leader's changes.
func TestPromotionInstallsStorage(t *testing.T) {
	c := start(t)
	write(t, c.c1.StorageDir(), "modules/a.js", []byte("a"))
	writeRandom(t, filepath.Join(c.c1.StorageDir(), "files/blob"), 5<<20, 2)
	waitSame(t, c.c1.StorageDir(), c.c2.ShadowStorageDir(), 10*time.Second)
	// Written just before the switchover: the demotion's flush publishes it.
	write(t, c.c1.StorageDir(), "modules/late.js", []byte("late"))
	want := tree(t, c.c1.StorageDir())

	conf := filepath.Join(c.dir, "n1.json")
	require.NoError(t, config.Write(conf, c.c1, false))
	var out, errOut bytes.Buffer
	if err := cli.Run(context.Background(), []string{"promote", "--node", "n2", "--config", conf}, &out, &errOut); err != nil {
		t.Fatalf("ccm promote: %v %s", err, errOut.String())
	}
	waitState(t, c.s2.D, schema.StorageCapturing, 20*time.Second)
	if d := diff(want, tree(t, c.c2.StorageDir())); d != "" {
		t.Fatalf("promoted node's data path storage differs: %s", d)
	}
	write(t, c.c2.StorageDir(), "modules/b.js", []byte("b"))
	waitSame(t, c.c2.StorageDir(), c.c1.ShadowStorageDir(), 20*time.Second)
	waitState(t, c.s1.D, schema.StorageSynced, 10*time.Second)
}

// TestJoinBootstrapsStorage runs `ccm join` on a new node: it downloads
// every storage file with the database, in one progress display, and a
// second join keeps the files already there.
func TestJoinBootstrapsStorage(t *testing.T) {
	c := start(t)
	src := c.c1.StorageDir()
	write(t, src, "modules/x.js", []byte("x"))
	writeRandom(t, filepath.Join(src, "files/big"), 3<<20, 3)
	waitfor.Cond(t, 10*time.Second, func() error {
		if st := c.s1.D.Status().(schema.StorageStatus); st.Files != 2 {
			return fmt.Errorf("leader published %+v, want 2 files", st)
		}
		return nil
	})
	c3 := nodeConfig(c.dir, "n3", c.srv)
	conf := filepath.Join(c.dir, "n3.json")
	require.NoError(t, config.Write(conf, c3, false))
	join := func(args ...string) string {
		var out, errOut bytes.Buffer
		if err := cli.Run(context.Background(), append([]string{"join", "--config", conf}, args...), &out, &errOut); err != nil {
			t.Fatalf("ccm join: %v %s %s", err, out.String(), errOut.String())
		}
		return out.String()
	}
	out := join()
	if !strings.Contains(out, "storage: 2 files") || !strings.Contains(out, "storage: 3.0 MiB in") {
		t.Fatalf("join output lacks the storage download:\n%s", out)
	}
	if d := diff(tree(t, src), tree(t, c3.ShadowStorageDir())); d != "" {
		t.Fatalf("joined storage differs: %s", d)
	}
	big := filepath.Join(c3.ShadowStorageDir(), "files/big")
	st, _ := os.Stat(big)
	ino := st.Sys().(*syscall.Stat_t).Ino
	join("--force")
	st, _ = os.Stat(big)
	if st.Sys().(*syscall.Stat_t).Ino != ino {
		t.Fatal("a second join downloaded a file that was already there")
	}
}

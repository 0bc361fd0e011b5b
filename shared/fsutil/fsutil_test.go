package fsutil_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/shared/fsutil"
)

// TestWriteAtomic: a write replaces the file with the mode asked; a
// failed write leaves the old file and no temporary file.
func TestWriteAtomic(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	require.NoError(t, fsutil.WriteFileSync(path, []byte("one"), 0o640))
	failed := errors.New("disk full")
	err := fsutil.WriteAtomic(path, 0o600, func(f *os.File) error {
		f.Write([]byte("half of tw"))
		return failed
	})
	if !errors.Is(err, failed) {
		t.Fatalf("a failed write returned %v, want its error", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "one" {
		t.Fatalf("after a failed write the file holds %q, want the old %q", b, "one")
	}
	if _, err := os.Stat(path + ".tmp"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("temporary file left behind: %v", err)
	}
	require.NoError(t, fsutil.WriteFileSync(path, []byte("two"), 0o604))
	st, err := os.Stat(path)
	if b, _ := os.ReadFile(path); err != nil || string(b) != "two" || st.Mode().Perm() != 0o604 {
		t.Fatalf("after a write: %q mode %v (%v), want %q mode 0604", b, st.Mode().Perm(), err, "two")
	}
}

// TestOwnTree: files a root process wrote under a directory get the
// directory's owner and group (ccm join writes a shadow for ccm-walapply).
func TestOwnTree(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to change owners")
	}
	dir := filepath.Join(t.TempDir(), "replica")
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "storage", "modules"), 0o750))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "db.sqlite3"), []byte("x"), 0o640))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "storage", "modules", "m.js"), []byte("x"), 0o640))
	const uid, gid = 65534, 65533
	require.NoError(t, os.Chown(dir, uid, gid))
	require.NoError(t, fsutil.OwnTree(dir))
	n := 0
	require.NoError(t, filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		require.NoError(t, err)
		st, err := os.Stat(path)
		require.NoError(t, err)
		sys := st.Sys().(*syscall.Stat_t)
		require.Equal(t, [2]uint32{uid, gid}, [2]uint32{sys.Uid, sys.Gid}, path)
		n++
		return nil
	}))
	require.Equal(t, 5, n)
}

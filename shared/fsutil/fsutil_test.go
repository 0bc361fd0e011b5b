package fsutil_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
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

package fsutil

import (
	"os"

	"golang.org/x/sys/unix"
)

// WritebackEvery is how many bytes a Writeback lets accumulate before it
// starts writing them to disk.
const WritebackEvery = 8 << 20

// Writeback starts writing a file's dirty pages to disk while it is being
// written, without waiting for them, so that the fsync at its end finds
// little left to do (and the page cache does not fill with one file).
type Writeback struct {
	f       *os.File
	pending int64
}

// NewWriteback follows writes to f.
func NewWriteback(f *os.File) *Writeback { return &Writeback{f: f} }

// Wrote records n bytes written; every WritebackEvery bytes it starts the
// writeback of the whole file. It is a hint: errors surface at fsync.
func (w *Writeback) Wrote(n int) {
	w.pending += int64(n)
	if w.pending < WritebackEvery {
		return
	}
	w.pending = 0
	unix.SyncFileRange(int(w.f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
}

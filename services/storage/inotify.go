package storage

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// watchMask is what a directory watch reports: files finished, moved in
// or out, deleted, their mode or times changed, and directories created
// (to watch them too).
const watchMask = unix.IN_CLOSE_WRITE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM | unix.IN_DELETE | unix.IN_ATTRIB |
	unix.IN_CREATE | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR

// notifier watches a directory tree with inotify and reports the relative
// paths that may have changed. When it cannot keep up (queue overflow, a
// directory moved) it asks for a full reconcile instead.
type notifier struct {
	root string
	f    *os.File

	mu   sync.Mutex
	dirs map[int32]string // watch descriptor -> relative dir ("" is root)
}

// event is one report of the notifier.
type event struct {
	path      string // relative path that may have changed
	dir       bool   // path is a directory that appeared: walk it
	reconcile bool   // lost track: compare the whole tree
}

func newNotifier(root string) (*notifier, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	// Non-blocking, so that the runtime poller serves reads and Close
	// interrupts one in progress.
	return &notifier{root: root, f: os.NewFile(uintptr(fd), "inotify"), dirs: map[int32]string{}}, nil
}

// watchTree adds a watch to rel and every directory below it.
func (n *notifier) watchTree(rel string) error {
	return filepath.WalkDir(filepath.Join(n.root, rel), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // gone meanwhile: its delete event follows
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		r, _ := filepath.Rel(n.root, p)
		if r == "." {
			r = ""
		}
		wd, err := unix.InotifyAddWatch(int(n.f.Fd()), p, watchMask)
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("watch %s: %w (raise fs.inotify.max_user_watches?)", p, err)
		}
		n.mu.Lock()
		n.dirs[int32(wd)] = r
		n.mu.Unlock()
		return nil
	})
}

// read reports events until the notifier is closed.
func (n *notifier) read(out func(event)) error {
	buf := make([]byte, 64<<10)
	for {
		k, err := n.f.Read(buf)
		if errors.Is(err, os.ErrClosed) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read inotify events: %w", err)
		}
		for off := 0; off+unix.SizeofInotifyEvent <= k; {
			raw := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(raw.Len)]
			off += unix.SizeofInotifyEvent + int(raw.Len)
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			n.dispatch(raw.Wd, raw.Mask, string(name), out)
		}
	}
}

func (n *notifier) dispatch(wd int32, mask uint32, name string, out func(event)) {
	if mask&unix.IN_Q_OVERFLOW != 0 {
		out(event{reconcile: true})
		return
	}
	n.mu.Lock()
	dir, ok := n.dirs[wd]
	if mask&unix.IN_IGNORED != 0 {
		delete(n.dirs, wd)
	}
	n.mu.Unlock()
	if !ok {
		return
	}
	rel := filepath.Join(dir, name)
	switch {
	case mask&(unix.IN_DELETE_SELF|unix.IN_MOVE_SELF|unix.IN_IGNORED) != 0:
		// A watched directory went away or moved: paths below it are
		// stale in the watch table. Start over from the tree itself.
		if dir == "" || mask&unix.IN_MOVE_SELF != 0 {
			out(event{reconcile: true})
		}
	case mask&unix.IN_ISDIR != 0 && mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0:
		out(event{path: rel, dir: true})
	case mask&unix.IN_ISDIR != 0 && mask&unix.IN_MOVED_FROM != 0:
		out(event{reconcile: true})
	case mask&unix.IN_ISDIR != 0:
	case mask&unix.IN_CREATE != 0:
		// Wait for IN_CLOSE_WRITE; a file created by link or mknod is
		// found by the next reconcile.
	default:
		out(event{path: rel})
	}
}

func (n *notifier) close() error { return n.f.Close() }

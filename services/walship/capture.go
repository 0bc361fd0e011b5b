package walship

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"syscall"
	"time"
)

// walIndexHeader is the size of the first copy of SQLite's WAL-index
// header at the start of the -shm file. SQLite rewrites it at every
// commit and checkpoint — not while a transaction writes its frames.
const walIndexHeader = 48

// commitWatch tells whether a database may have committed since it last
// looked, from its WAL-index header.
//
// It keeps every -shm file it opened open until close, which runs after
// Litestream has closed: closing any descriptor of a file drops every
// POSIX lock this process holds on it, and SQLite's locks on the -shm file
// are POSIX locks. Reading the header with a fresh descriptor each tick
// once dropped Litestream's read lock every 20 ms: the backend, another
// process, then checkpointed frames Litestream had not captured and
// restarted the WAL over them (TestShipWithABackendProcessLosesNothing).
type commitWatch struct {
	shm   string
	f     *os.File   // the -shm file now at shm
	ino   uint64     // f's inode
	stale []*os.File // earlier -shm files (replaced at shm), kept open too
	last  []byte     // nil: sync on the next look
}

// changed reads the header and reports whether it differs from the last
// one seen (or cannot be read: no -shm yet, a database not in WAL mode).
func (w *commitWatch) changed() bool {
	h := make([]byte, walIndexHeader)
	if err := w.open(); err != nil {
		w.last = nil
		return true
	}
	if _, err := w.f.ReadAt(h, 0); err != nil {
		w.last = nil
		return true
	}
	if w.last != nil && bytes.Equal(h, w.last) {
		return false
	}
	w.last = h
	return true
}

// open opens the -shm file at shm unless the one open is still there.
func (w *commitWatch) open() error {
	st, err := os.Stat(w.shm)
	if err != nil {
		return err
	}
	ino := st.Sys().(*syscall.Stat_t).Ino
	if w.f != nil && ino == w.ino {
		return nil
	}
	f, err := os.Open(w.shm)
	if err != nil {
		return err
	}
	if w.f != nil {
		w.stale = append(w.stale, w.f)
	}
	w.f, w.ino = f, ino
	return nil
}

// close closes the -shm files: only once no SQLite connection of this
// process may hold a lock on them.
func (w *commitWatch) close() {
	for _, f := range append(w.stale, w.f) {
		if f != nil {
			f.Close()
		}
	}
	w.f, w.stale = nil, nil
}

// slowStep is how long a capture or an append may take before it is
// logged: either holds back every later change.
const slowStep = time.Second

// capturedAhead is how many captured files may wait to be shipped before
// capturing pauses.
const capturedAhead = 2

// capture runs Litestream's sync every interval when the database
// committed since the last one. Litestream's own monitor syncs on every
// tick, and a sync reads the WAL from the last captured frame to its end:
// while a large transaction writes its frames (before it commits), that
// is a read of the whole uncommitted tail every tick — quadratic in the
// transaction's size, enough to starve the node's other daemons.
func (s *Shipper) capture(ctx context.Context, interval time.Duration, log *slog.Logger) {
	w := s.watch
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var backoff time.Duration
	var logged time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		// While shipping is behind, the commits wait in the WAL and the
		// next capture takes them as one file: one file per tick, each
		// appended on its own (behind ccm-storage's barrier), once let a
		// backlog grow without end under steady writes.
		if s.captured.Load() > s.chainHead()+capturedAhead {
			continue
		}
		// The header is read before the sync: a commit after it changes
		// it again, and the next tick catches that.
		if !w.changed() {
			continue
		}
		start := time.Now()
		err := s.sync(ctx)
		if took := time.Since(start); took > slowStep {
			log.Warn("capturing the WAL was slow: nothing was shipped meanwhile", "took", took.Round(time.Millisecond), "err", err)
		}
		if s.Broken() != nil {
			log.Error("capture stopped", "err", err)
			return
		}
		if err == nil {
			s.captureDone()
			backoff = 0
			continue
		}
		if ctx.Err() != nil {
			return
		}
		w.last = nil // retry even if nothing else commits
		backoff = min(max(2*backoff, interval), 5*time.Second)
		if time.Since(logged) > 10*time.Second {
			log.Error("capture WAL", "err", err, "retry_in", backoff)
			logged = time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
	}
}

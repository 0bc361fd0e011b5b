package main

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite"
)

// createLeaderDB creates the database like the backend would: no pragmas.
func createLeaderDB(path string) error {
	db, err := sql.Open("sqlite", path)
	if err != nil {
		return err
	}
	defer db.Close()
	_, err = db.Exec(`CREATE TABLE rows (id INTEGER PRIMARY KEY, pad TEXT)`)
	return err
}

// drive commits one ~200-byte row every 1/rate s for d on the leader while
// polling the replica's database for the highest visible id every 2 ms, and
// returns each row's lag from acknowledged commit to visibility.
func drive(ctx context.Context, leader, replica string, rate int, d time.Duration) (lags []time.Duration, commits, unseen int, err error) {
	w, err := sql.Open("sqlite", "file:"+leader+"?_pragma=busy_timeout(10000)")
	if err != nil {
		return nil, 0, 0, err
	}
	defer w.Close()
	w.SetMaxOpenConns(1)

	var mu sync.Mutex
	committed := map[int64]time.Time{}
	seen := map[int64]time.Time{}
	pctx, stopPoll := context.WithCancel(ctx)
	pollDone := make(chan struct{})
	var maxSeen int64
	go func() {
		defer close(pollDone)
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-pctx.Done():
				return
			case <-t.C:
			}
			id := visible(replica)
			now := time.Now()
			mu.Lock()
			for i := maxSeen + 1; i <= id; i++ {
				seen[i] = now
			}
			maxSeen = max(maxSeen, id)
			mu.Unlock()
		}
	}()

	pad := strings.Repeat("p", 200)
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	var id int64
	for next := start; time.Since(start) < d; next = next.Add(interval) {
		if s := time.Until(next); s > 0 {
			time.Sleep(s)
		}
		id++
		if _, err := w.ExecContext(ctx, `INSERT INTO rows (id, pad) VALUES (?, ?)`, id, pad); err != nil {
			stopPoll()
			<-pollDone
			return nil, 0, 0, fmt.Errorf("commit %d: %w", id, err)
		}
		mu.Lock()
		committed[id] = time.Now()
		mu.Unlock()
	}
	// Let the replica catch up.
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		mu.Lock()
		done := maxSeen >= id
		mu.Unlock()
		if done {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	stopPoll()
	<-pollDone
	for i := int64(1); i <= id; i++ {
		s, ok := seen[i]
		if !ok {
			unseen++
			continue
		}
		lags = append(lags, max(0, s.Sub(committed[i])))
	}
	return lags, int(id), unseen, nil
}

// visible returns the highest row id in the replica's database file, read
// as an immutable file so that the reader never writes or locks it; a read
// that races with a write simply returns an older answer.
func visible(path string) int64 {
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro&immutable=1")
	if err != nil {
		return 0
	}
	defer db.Close()
	var id sql.NullInt64
	if err := db.QueryRow(`SELECT max(id) FROM rows`).Scan(&id); err != nil {
		return 0
	}
	return id.Int64
}

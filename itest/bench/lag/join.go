package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/convex-cluster-manager/ccm/shared/snapstore"
)

// measureJoin stores a snapshot of a database of o.bootstrap MiB and times
// `ccm join` of it (download, verification, install).
func measureJoin(ctx context.Context, o options) error {
	c, err := newCluster(o.keep, o.natsSync)
	if err != nil {
		return err
	}
	defer c.close()
	conf, err := c.nodeConfig(o.bin, "n1")
	if err != nil {
		return err
	}
	if err := c.start("elector-n1", filepath.Join(o.bin, "ccm-elector"), "-config", conf, "-metrics-addr", ""); err != nil {
		return err
	}
	img := filepath.Join(c.dir, "big.db")
	t0 := time.Now()
	if err := bigDB(img, o.bootstrap<<20); err != nil {
		return err
	}
	st, _ := os.Stat(img)
	fmt.Printf("# bootstrap: built a %.0f MiB database in %s\n", float64(st.Size())/(1<<20), time.Since(t0).Round(time.Second))
	f, err := os.Open(img)
	if err != nil {
		return err
	}
	sum, _, err := snapstore.Checksum(f, 4096)
	f.Close()
	if err != nil {
		return err
	}
	nc, err := nats.Connect(c.url)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	store, err := snapstore.Open(ctx, js, "bench", 1)
	if err != nil {
		return err
	}
	t0 = time.Now()
	if _, err := store.Put(ctx, img, snapstore.Snapshot{Epoch: 1, TXID: 1, Seq: 1, Checksum: sum, PageSize: 4096, Node: "bench"}, 1); err != nil {
		return err
	}
	up := time.Since(t0)
	fmt.Printf("# bootstrap: snapshot upload %s (%.0f MiB/s)\n", up.Round(time.Millisecond), float64(st.Size())/(1<<20)/up.Seconds())
	os.Remove(img)
	t0 = time.Now()
	out, err := exec.CommandContext(ctx, filepath.Join(o.bin, "ccm"), "join", "--config", conf).CombinedOutput()
	took := time.Since(t0)
	if err != nil {
		return fmt.Errorf("ccm join: %v: %s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, " in ") && strings.HasPrefix(line, "download:") {
			fmt.Printf("# bootstrap: ccm join reported %s\n", strings.TrimPrefix(line, "download: "))
		}
	}
	fmt.Printf("ccm join   %.0f MiB in %s: %.0f MiB/s end to end (download, checksum, fsync, install)\n",
		float64(st.Size())/(1<<20), took.Round(time.Millisecond), float64(st.Size())/(1<<20)/took.Seconds())
	return nil
}

// bigDB writes a SQLite database of about size bytes of random blobs.
func bigDB(path string, size int64) error {
	db, err := sql.Open("sqlite", path)
	if err != nil {
		return err
	}
	defer db.Close()
	if _, err := db.Exec(`PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; CREATE TABLE blobs (id INTEGER PRIMARY KEY, b BLOB)`); err != nil {
		return err
	}
	blob := make([]byte, 64<<10)
	for written := int64(0); written < size; {
		tx, err := db.Begin()
		if err != nil {
			return err
		}
		for i := 0; i < 256 && written < size; i++ {
			rand.Read(blob)
			if _, err := tx.Exec(`INSERT INTO blobs (b) VALUES (?)`, blob); err != nil {
				tx.Rollback()
				return err
			}
			written += int64(len(blob))
		}
		if err := tx.Commit(); err != nil {
			return err
		}
	}
	return nil
}

func visibleTable(path string) error {
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro&immutable=1")
	if err != nil {
		return err
	}
	defer db.Close()
	var n int
	return db.QueryRow(`SELECT count(*) FROM rows`).Scan(&n)
}

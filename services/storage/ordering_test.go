package storage_test

import (
	"database/sql"
	"os"
	"path/filepath"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/convex-cluster-manager/ccm/services/storage"
	"github.com/convex-cluster-manager/ccm/services/walapply"
	"github.com/convex-cluster-manager/ccm/services/walship"
	"github.com/convex-cluster-manager/ccm/shared/daemon/daemontest"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// TestRowNeverShipsBeforeItsFile: like Convex, the backend writes a
// storage file and then commits a row naming it. While the leader's
// ccm-storage cannot publish the file (its NATS connection blackholed),
// the row must not reach the passive: a crash then would leave the new
// leader a row whose file no node has. Once a restarted ccm-storage
// publishes the file, the row follows.
func TestRowNeverShipsBeforeItsFile(t *testing.T) {
	c := startProxied(t)
	c1, c2, s1, proxy := c.c1, c.c2, c.s1, c.proxy
	for _, p := range []string{c1.Backend.DataPath, c2.Backend.DataPath} {
		os.MkdirAll(p, 0o755)
	}
	db, err := sql.Open("sqlite", "file:"+c1.Backend.DBPath()+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := db.Exec(q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	exec(`CREATE TABLE uploads (name TEXT)`)
	ws := daemontest.Start[*walship.Daemon](t, walship.Spec(), c1)
	wa := daemontest.Start[*walapply.Daemon](t, walapply.Spec(), c2)
	waitState(t, s1.D, schema.StorageCapturing, 20*time.Second)
	upload := func(name string) {
		t.Helper()
		write(t, c1.StorageDir(), name, []byte("contents of "+name))
		exec(`INSERT INTO uploads (name) VALUES (?)`, name)
	}
	applied := func() uint64 { return wa.D.Status().(schema.ApplyStatus).TXID }
	// The first full copy (TXID 1) is shipped before the first upload, so
	// that the row of files/a is TXID 2.
	for deadline := time.Now().Add(20 * time.Second); ws.D.Status().(walship.Status).TXID == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("walship does not ship: %+v", ws.D.Status())
		}
	}
	upload("files/a")
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		shipped := ws.D.Status().(walship.Status).TXID
		if shipped >= 2 && applied() == shipped {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the first upload's row was not applied: shipped %+v, applied %+v", ws.D.Status(), wa.D.Status())
		}
	}
	before := applied()

	proxy.Cut()
	upload("files/b")
	time.Sleep(time.Second) // a row ships within tens of milliseconds
	if got := applied(); got != before {
		t.Fatalf("the row naming files/b was applied on the passive (TXID %d, before %d) while its file could not be published", got, before)
	}
	// The leader says what it holds back: a failover now would lose it.
	if st := ws.D.Status().(walship.Status); st.UnshippedTXIDs == 0 || st.UnshippedMs < 500 {
		t.Fatalf("walship status while the row waits for its file: %+v, want unshipped TXIDs waiting about a second", st)
	}

	// ccm-storage dies with the barrier request it took and is restarted
	// (connected directly): walship asks the new one, which publishes the
	// file, and the row follows.
	s1.Stop()
	s1 = daemontest.Start[*storage.Daemon](t, storage.Spec(), c1)
	for deadline := time.Now().Add(30 * time.Second); applied() == before; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the row naming files/b was not applied once a restarted ccm-storage could publish: %+v", wa.D.Status())
		}
	}
	if st := s1.D.Status().(schema.StorageStatus); st.Files < 2 {
		t.Fatalf("the row naming files/b was applied, but the leader's manifest holds %d files: %+v", st.Files, st)
	}
	if _, err := os.Stat(filepath.Join(c1.StorageDir(), "files/b")); err != nil {
		t.Fatal(err)
	}
}

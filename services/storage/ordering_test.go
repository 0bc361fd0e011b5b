package storage_test

import (
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/stretchr/testify/require"

	et "github.com/convex-cluster-manager/ccm/services/elector/electortest"
	"github.com/convex-cluster-manager/ccm/services/storage"
	"github.com/convex-cluster-manager/ccm/services/walapply"
	"github.com/convex-cluster-manager/ccm/services/walship"
	"github.com/convex-cluster-manager/ccm/shared/daemon/daemontest"
	"github.com/convex-cluster-manager/ccm/shared/schema"
	"github.com/convex-cluster-manager/ccm/shared/waitfor"
)

// TestRowNeverShipsBeforeItsFile: like Convex, the backend writes a
// storage file and then commits a row naming it. While the leader's
// ccm-storage cannot publish the file (its NATS connection blackholed),
// the row must not reach the passive: a crash then would leave the new
// leader a row whose file no node has. Once a restarted ccm-storage
// publishes the file, the row follows.
func TestRowNeverShipsBeforeItsFile(t *testing.T) {
	sh := startShipping(t)
	c1, s1, proxy, exec, ws, wa := sh.c.c1, sh.c.s1, sh.c.proxy, sh.exec, sh.ws, sh.wa
	waitState(t, s1.D, schema.StorageCapturing, 20*time.Second)
	upload := func(name string) {
		t.Helper()
		write(t, c1.StorageDir(), name, []byte("contents of "+name))
		exec(`INSERT INTO uploads (name) VALUES (?)`, name)
	}
	applied := sh.applied
	// The first full copy (TXID 1) is shipped before the first upload
	// (startShipping), so that the row of files/a is TXID 2.
	upload("files/a")
	waitfor.Cond(t, 20*time.Second, func() error {
		shipped := ws.D.Status().(walship.Status)
		applied := wa.D.Status().(schema.ApplyStatus)
		if shipped.TXID < 2 || applied.TXID != shipped.TXID {
			return fmt.Errorf("the first upload's row was not applied: shipped %+v, applied %+v", shipped, applied)
		}
		return nil
	})
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
	waitfor.Cond(t, 30*time.Second, func() error {
		if st := wa.D.Status().(schema.ApplyStatus); st.TXID == before {
			return fmt.Errorf("the row naming files/b was not applied once a restarted ccm-storage could publish: %+v", st)
		}
		return nil
	})
	if st := s1.D.Status().(schema.StorageStatus); st.Files < 2 {
		t.Fatalf("the row naming files/b was applied, but the leader's manifest holds %d files: %+v", st.Files, st)
	}
	if _, err := os.Stat(filepath.Join(c1.StorageDir(), "files/b")); err != nil {
		t.Fatal(err)
	}
}

// TestShippingGoesOnWhileStorageCannotPublish: while the leader's
// ccm-storage cannot publish (its NATS connection blackholed), walship
// holds the rows back for one lease TTL, then ships anyway — and must
// then ship the whole backlog, not one file per TTL: a leader whose
// ccm-storage failed so acknowledged hundreds of writes it had not
// shipped, and a later partition of it lost them all (TestBenchFailover).
// Once ccm-storage answers again, rows wait for their files again.
func TestShippingGoesOnWhileStorageCannotPublish(t *testing.T) {
	sh := startShipping(t)
	c, c1, proxy, exec, ws, wa := sh.c, sh.c.c1, sh.c.proxy, sh.exec, sh.ws, sh.wa
	applied := sh.applied

	proxy.Cut()
	const rows = 40
	for i := range rows {
		name := "files/" + strconv.Itoa(i)
		write(t, c1.StorageDir(), name, []byte("contents of "+name))
		exec(`INSERT INTO uploads (name) VALUES (?)`, name)
		time.Sleep(30 * time.Millisecond) // about one captured file per row
	}
	last := ws.D.Status().(walship.Status).TXID + ws.D.Status().(walship.Status).UnshippedTXIDs
	wrote := time.Now()
	bound := 3 * et.TTL // one TTL of waiting, then the backlog at once
	waitfor.Cond(t, bound, func() error {
		if got := applied(); got < last {
			return fmt.Errorf("after the last of %d rows written while ccm-storage could not publish, the passive applied TXID %d of %d: shipping stalls behind the storage barrier (walship %+v)",
				rows, got, last, ws.D.Status())
		}
		return nil
	})
	t.Logf("%d rows written while ccm-storage was cut off applied %s after the last", rows, time.Since(wrote).Round(time.Millisecond))

	if !ws.D.Status().(walship.Status).StorageBarrierDown {
		t.Fatalf("walship shipped without the storage barrier but does not say so: %+v", ws.D.Status())
	}

	// ccm-storage answers again: the next rows shipped find it, and rows
	// wait for their files again.
	proxy.Heal()
	waitState(t, c.s1.D, schema.StorageCapturing, 30*time.Second)
	waitfor.Poll(t, 30*time.Second, 100*time.Millisecond, func() error {
		st := ws.D.Status().(walship.Status)
		if !st.StorageBarrierDown {
			return nil
		}
		exec(`INSERT INTO uploads (name) VALUES ('after')`)
		return fmt.Errorf("ccm-storage answers again, but walship still ships without its barrier: %+v", st)
	})
	waitfor.Cond(t, 10*time.Second, func() error {
		if st := ws.D.Status().(walship.Status); st.UnshippedTXIDs > 0 {
			return fmt.Errorf("walship does not catch up once ccm-storage answers: %+v", st)
		}
		return nil
	})
	shipped := ws.D.Status().(walship.Status).TXID
	waitfor.Cond(t, 10*time.Second, func() error {
		if st := wa.D.Status().(schema.ApplyStatus); st.TXID < shipped {
			return fmt.Errorf("the passive does not apply TXID %d: %+v", shipped, st)
		}
		return nil
	})
	before := applied()
	proxy.Cut()
	write(t, c1.StorageDir(), "files/late", []byte("late"))
	exec(`INSERT INTO uploads (name) VALUES ('files/late')`)
	time.Sleep(time.Second)
	if got := applied(); got != before {
		t.Fatalf("after ccm-storage recovered, a row naming an unpublished file was applied at once (TXID %d, before %d): the barrier was not restored", got, before)
	}
}

// shipping is a leader (n1, its ccm-storage behind a proxy) running
// walship on a database with a table uploads, and a passive (n2) running
// walapply, once the first full copy has shipped.
type shipping struct {
	c    *cluster
	exec func(q string, args ...any)
	ws   *daemontest.Running[*walship.Daemon]
	wa   *daemontest.Running[*walapply.Daemon]
}

func startShipping(t *testing.T) *shipping {
	t.Helper()
	c := startProxied(t)
	for _, p := range []string{c.c1.Backend.DataPath, c.c2.Backend.DataPath} {
		os.MkdirAll(p, 0o755)
	}
	db, err := sql.Open("sqlite", "file:"+c.c1.Backend.DBPath()+"?_pragma=busy_timeout(5000)")
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	db.SetMaxOpenConns(1)
	sh := &shipping{c: c, exec: func(q string, args ...any) {
		t.Helper()
		if _, err := db.Exec(q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}}
	sh.exec(`CREATE TABLE uploads (name TEXT)`)
	sh.ws = daemontest.Start[*walship.Daemon](t, walship.Spec(), c.c1)
	sh.wa = daemontest.Start[*walapply.Daemon](t, walapply.Spec(), c.c2)
	waitfor.Cond(t, 20*time.Second, func() error {
		if st := sh.ws.D.Status().(walship.Status); st.TXID == 0 {
			return fmt.Errorf("walship does not ship: %+v", st)
		}
		return nil
	})
	return sh
}

// applied is the TXID the passive applied.
func (sh *shipping) applied() uint64 { return sh.wa.D.Status().(schema.ApplyStatus).TXID }

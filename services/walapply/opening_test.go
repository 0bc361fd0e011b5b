package walapply_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	et "github.com/convex-cluster-manager/ccm/services/elector/electortest"
	"github.com/convex-cluster-manager/ccm/services/walapply"
	"github.com/convex-cluster-manager/ccm/services/walship"
	"github.com/convex-cluster-manager/ccm/shared/daemon/daemontest"
	"github.com/convex-cluster-manager/ccm/shared/natstest"
	"github.com/convex-cluster-manager/ccm/shared/schema"
	"github.com/convex-cluster-manager/ccm/shared/waitfor"
)

// TestShadowThatCannotBeOpenedYetIsRetried: a passive whose shadow cannot
// be created at start (here its replica directory is blocked by a file,
// as a full or unmounted disk would) reports "opening" with the reason and
// is not eligible; once the obstacle is gone it opens, follows and catches
// up by itself, without a restart (it used to stay FAILED until one).
func TestShadowThatCannotBeOpenedYetIsRetried(t *testing.T) {
	srv := natstest.Server(t)
	dir := t.TempDir()
	c1 := nodeConfig(t, dir, "n1", srv.ClientURL())
	c2 := nodeConfig(t, dir, "n2", srv.ClientURL())
	createDocs(t, c1.Backend.DBPath())
	n1 := et.Start(t, c1)
	et.WaitLeader(t, []*et.Node{n1}, et.TTL)
	ws := daemontest.Start[*walship.Daemon](t, walship.Spec(), c1)
	waitShipping(t, ws, func() bool { return true })
	w := openDB(t, writerDSN(c1.Backend.DBPath()))
	defer w.Close()
	workload(t, w, 200, 3)

	if err := os.WriteFile(c2.WAL.ReplicaPath, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	n2 := et.Start(t, c2)
	ap := daemontest.Start[*walapply.Daemon](t, walapply.Spec(), c2)
	mux := http.NewServeMux()
	n2.El.AddHTTP(mux)
	lb := httptest.NewServer(mux)
	defer lb.Close()
	replicaCheck := func(query string) (int, string) {
		resp, err := http.Get(lb.URL + "/replica" + query)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitfor.Cond(t, 10*time.Second, func() error {
		if st := ap.D.Status().(schema.ApplyStatus); st.State != schema.ApplyOpening || st.Error == "" {
			return fmt.Errorf("status %+v, want %q with the reason", st, schema.ApplyOpening)
		}
		return nil
	})
	t.Logf("blocked: %s", ap.D.Status().(schema.ApplyStatus).Error)
	// A load balancer sends no reads to it.
	waitfor.Cond(t, 5*time.Second, func() error {
		if code, body := replicaCheck(""); code != http.StatusServiceUnavailable || !strings.Contains(body, "replication opening") {
			return fmt.Errorf("GET /replica while opening: %d %s", code, body)
		}
		return nil
	})

	if err := os.Remove(c2.WAL.ReplicaPath); err != nil {
		t.Fatal(err)
	}
	workload(t, w, 200, 4)
	flushed := request[schema.FlushReply](t, natstest.Connect(t, srv.ClientURL()), schema.Endpoint("dc", "n1", schema.ServiceWalship, "flush"))
	waitfor.Cond(t, 30*time.Second, func() error {
		if st := ap.D.Status().(schema.ApplyStatus); st.State != schema.ApplyFollowing || st.TXID != flushed.TXID {
			return fmt.Errorf("status %+v, want following at TXID %d", st, flushed.TXID)
		}
		return nil
	})
	waitfor.Cond(t, 5*time.Second, func() error {
		if code, body := replicaCheck("?max_lag_ms=60000"); code != http.StatusOK || !strings.Contains(body, `"lagMs"`) {
			return fmt.Errorf("GET /replica once following: %d %s", code, body)
		}
		return nil
	})
	if code, body := replicaCheck("?max_lag_ms=soon"); code != http.StatusBadRequest {
		t.Errorf("GET /replica?max_lag_ms=soon: %d %s", code, body)
	}
	wantCheck, want := digest(t, c1.Backend.DBPath())
	gotCheck, got := digest(t, snapshotCopy(t, c2.ShadowPath()))
	if wantCheck != "ok" || gotCheck != "ok" || got != want {
		t.Fatalf("shadow differs: integrity %q/%q, rows %s vs %s", wantCheck, gotCheck, got, want)
	}
}

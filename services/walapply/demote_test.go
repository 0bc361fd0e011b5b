package walapply_test

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	et "github.com/convex-cluster-manager/ccm/services/elector/electortest"
	"github.com/convex-cluster-manager/ccm/services/walapply"
	"github.com/convex-cluster-manager/ccm/services/walship"
	"github.com/convex-cluster-manager/ccm/shared/daemon/daemontest"
	"github.com/convex-cluster-manager/ccm/shared/natstest"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// TestFailedDemotionServesAgain: when the final WAL flush of a graceful
// demotion fails (the leader's walship cut off from NATS), the leader does
// not hand over what it could not ship, and it does not stay a lame duck
// holding the key without serving: it serves again within one TTL and
// says why.
func TestFailedDemotionServesAgain(t *testing.T) {
	srv := natstest.Server(t)
	dir := t.TempDir()
	c1, c2 := nodeConfig(t, dir, "n1", srv.ClientURL()), nodeConfig(t, dir, "n2", srv.ClientURL())
	createDocs(t, c1.Backend.DBPath())
	n1 := et.Start(t, c1)
	et.WaitLeader(t, []*et.Node{n1}, et.TTL)
	et.Start(t, c2)
	proxy := natstest.NewProxy(t, srv.Addr().String())
	cw := c1
	cw.NATS.Servers = []string{proxy.URL()}
	ws := daemontest.Start[*walship.Daemon](t, walship.Spec(), cw)
	daemontest.Start[*walapply.Daemon](t, walapply.Spec(), c2)
	waitShipping(t, ws, func() bool { return n1.El.State().Ready })
	epoch := n1.El.State().Epoch
	w := openDB(t, writerDSN(c1.Backend.DBPath()))
	defer w.Close()
	mustExec(t, w, `INSERT INTO docs (body) VALUES ('written before the demotion')`)

	duck := et.WatchNotServing(t, n1)
	proxy.Cut()
	defer proxy.Heal()
	nc := natstest.Connect(t, srv.ClientURL())
	msg, err := nc.Request(schema.Endpoint("dc", "n1", schema.ServiceElector, "demote"), nil, 2*time.Minute)
	require.NoError(t, err)
	if e := msg.Header.Get("Nats-Service-Error"); !strings.Contains(e, "still serving") || !strings.Contains(e, "WAL flush") {
		t.Fatalf("demote with the WAL flush failing: %q, want it aborted and still serving", e)
	}
	if s := n1.El.State(); s.Role != schema.RoleLeader || s.Epoch != epoch || !s.Ready {
		t.Fatalf("after the aborted demotion n1 is %s of epoch %d (ready %v), want the ready leader of %d", s.Role, s.Epoch, s.Ready, epoch)
	}
	// No ccm-backend here: serving again is instant once the drain gives up.
	if d, bound := duck.Longest(), et.TTL+et.Heartbeat; d > bound {
		t.Fatalf("the failed demotion held the key without serving for %s (bound %s)", d.Round(time.Millisecond), bound)
	}
}

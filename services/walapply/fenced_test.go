package walapply_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	et "github.com/convex-cluster-manager/ccm/services/elector/electortest"
	"github.com/convex-cluster-manager/ccm/services/walship"
	"github.com/convex-cluster-manager/ccm/shared/daemon/daemontest"
	"github.com/convex-cluster-manager/ccm/shared/natstest"
	"github.com/convex-cluster-manager/ccm/shared/schema"
	"github.com/convex-cluster-manager/ccm/shared/waitfor"
	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

// TestFencedLeaderStepsDown: once the WAL stream refuses the leader's
// appends (another writer's message is in it), the leader cannot ship
// what it commits; walship says so in its status and the leader steps
// down instead of going on serving writes that no other node will have.
func TestFencedLeaderStepsDown(t *testing.T) {
	srv := natstest.Server(t)
	dir := t.TempDir()
	c1 := nodeConfig(t, dir, "n1", srv.ClientURL())
	createDocs(t, c1.Backend.DBPath())
	n1 := et.Start(t, c1)
	et.WaitLeader(t, []*et.Node{n1}, et.TTL)
	ws := daemontest.Start[*walship.Daemon](t, walship.Spec(), c1)

	nc := natstest.Connect(t, srv.ClientURL())
	waitShipping(t, ws, func() bool { return true })
	epoch := n1.El.State().Epoch
	w := openDB(t, writerDSN(c1.Backend.DBPath()))
	defer w.Close()
	mustExec(t, w, `INSERT INTO docs (body) VALUES ('shipped')`)
	request[schema.FlushReply](t, nc, schema.Endpoint("dc", "n1", schema.ServiceWalship, "flush"))

	js, err := jetstream.New(nc)
	require.NoError(t, err)
	if _, err := js.Publish(context.Background(), walstream.Subject("dc"), []byte("not the leader's")); err != nil {
		t.Fatal(err)
	}
	mustExec(t, w, `INSERT INTO docs (body) VALUES ('cannot be shipped')`)

	waitfor.Cond(t, 3*et.TTL, func() error {
		st := ws.D.Status().(walship.Status)
		s := n1.El.State()
		if !st.Shipping && strings.Contains(st.Error, "fenced") && !(s.Role == schema.RoleLeader && s.Epoch == epoch) {
			return nil
		}
		return fmt.Errorf("after the stream refused its appends: walship %+v, elector %s of epoch %d (led epoch %d)", st, s.Role, s.Epoch, epoch)
	})
}

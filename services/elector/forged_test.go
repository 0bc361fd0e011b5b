package elector_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// TestForgedNewerEpochDeposesNoOne: a role event claiming a far newer
// epoch for a node the leader key does not name changes nothing — the
// leader keeps leading its epoch and the passives keep following it. One
// such message from any client left a cluster without a leader for 5 TTLs
// (issue 13): the event deposed the leader and the epoch gate then
// refused every real epoch.
func TestForgedNewerEpochDeposesNoOne(t *testing.T) {
	c := startCluster(t, 3)
	l := waitLeader(t, c.nodes, testTTL)
	epoch := l.El.State().Epoch
	for _, forged := range []schema.RoleEvent{
		{Cluster: c.name, Node: "ghost", Role: schema.RoleLeader, Epoch: 1 << 60, Leader: "ghost"},
		{Cluster: c.name, Node: others(c.nodes, l)[0].ID, Role: schema.RoleLeader, Epoch: epoch + 1},
	} {
		forged.At, forged.Deadline = time.Now(), time.Now().Add(time.Minute)
		b, _ := json.Marshal(forged)
		require.NoError(t, c.nc.Publish(schema.RoleSubject(c.name, forged.Node), b))
	}
	require.NoError(t, c.nc.Flush())
	for end := time.Now().Add(3 * testTTL); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		for _, n := range c.nodes {
			s := n.El.State()
			if n == l {
				require.Truef(t, s.Role == schema.RoleLeader && s.Epoch == epoch, "leader %s after a forged event: %+v, want leader of epoch %d", n.ID, s, epoch)
			} else {
				require.Equalf(t, l.ID, s.Leader, "passive %s after a forged event: %+v, want following %s", n.ID, s, l.ID)
			}
		}
	}
}

package rolewatch

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/shared/natstest"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// TestForgedLeaderEventNotBelieved: an event saying this node leads an
// epoch that the leader key does not give it is not believed (a client
// that could publish it made a passive's VIP and backend start, issue 13);
// one the key confirms is.
func TestForgedLeaderEventNotBelieved(t *testing.T) {
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv.ClientURL())
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx := context.Background()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: schema.Bucket("c")})
	require.NoError(t, err)
	put := func(node string) uint64 {
		rec, _ := json.Marshal(schema.LeaderRecord{Node: node, Since: time.Now(), RenewedAt: time.Now(), LeaderTTLMs: 10000})
		rev, err := kv.Put(ctx, schema.KeyLeader, rec)
		require.NoError(t, err)
		return rev
	}
	publish := func(role schema.Role, epoch uint64) {
		b, _ := json.Marshal(schema.RoleEvent{Cluster: "c", Node: "n2", Role: role, Epoch: epoch,
			Deadline: time.Now().Add(time.Minute), At: time.Now()})
		require.NoError(t, nc.Publish(schema.RoleSubject("c", "n2"), b))
		require.NoError(t, nc.Flush())
	}
	n1 := put("n1")
	tr, err := Subscribe(nc, "c", "n2", 10*time.Second, slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.NoError(t, err)
	defer tr.Close()

	for _, epoch := range []uint64{n1, n1 + 1, 1 << 60} {
		publish(schema.RoleLeader, epoch)
		time.Sleep(300 * time.Millisecond)
		_, _, leading := tr.Leading(time.Now())
		require.Falsef(t, leading, "n2 believes it leads epoch %d, which the leader key (n1, epoch %d) does not give it", epoch, n1)
	}
	// Nor does a revocation from a far epoch shut the real ones out.
	publish(schema.RolePassive, 1<<61)
	// The forged epochs did not shut out the real one.
	n2 := put("n2")
	publish(schema.RoleLeader, n2)
	require.NoError(t, tr.WaitLeading(ctx, n2, 5*time.Second), "an event the leader key confirms")
}

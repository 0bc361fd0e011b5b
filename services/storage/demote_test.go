package storage_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	et "github.com/convex-cluster-manager/ccm/services/elector/electortest"
	"github.com/convex-cluster-manager/ccm/shared/filestore"
	"github.com/convex-cluster-manager/ccm/shared/natstest"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// TestDemotionWithStuckStorageIsNoLameDuck demotes a leader whose
// ccm-storage does not answer (its NATS connection blackholed): the leader
// must not hold the key without serving for longer than one TTL. Once
// storage answers again, the demotion hands over with every file.
func TestDemotionWithStuckStorageIsNoLameDuck(t *testing.T) {
	c := startProxied(t)
	c1, c2, n1, n2, s2, proxy := c.c1, c.c2, c.n1, c.n2, c.s2, c.proxy
	write(t, c1.StorageDir(), "modules/a.js", []byte("a"))
	waitSame(t, c1.StorageDir(), c2.ShadowStorageDir(), 10*time.Second)
	duck := et.WatchNotServing(t, n1)

	proxy.Cut()
	write(t, c1.StorageDir(), "modules/late.js", []byte("written while storage is cut off"))
	nc := natstest.Connect(t, c.srv)
	type reply struct {
		errHeader string
		err       error
	}
	replies := make(chan reply, 1)
	go func() {
		msg, err := nc.Request(schema.Endpoint("dc", "n1", schema.ServiceElector, "demote"), []byte(`{"to":"n2"}`), 2*time.Minute)
		if err != nil {
			replies <- reply{err: err}
			return
		}
		replies <- reply{errHeader: msg.Header.Get("Nats-Service-Error")}
	}()
	// Shorter than the client's stale-connection detection (two missed
	// pings, 5 s apart): cut off longer, ccm-storage would reconnect.
	// (3 TTLs, but at most 8 s: the race detector's TTLs are longer.)
	time.Sleep(min(3*et.TTL, 8*time.Second))
	if d, bound := duck.Longest(), et.TTL+et.Heartbeat; d > bound {
		t.Fatalf("with ccm-storage stuck, the demoting leader held the key without serving for %s (bound %s)", d.Round(time.Millisecond), bound)
	}
	if s := n1.El.State(); s.Role != schema.RoleLeader || !s.Ready {
		t.Fatalf("with ccm-storage stuck, n1 is %s (ready %v), want still the serving leader", s.Role, s.Ready)
	}

	proxy.Heal()
	select {
	case r := <-replies:
		if r.err != nil || r.errHeader != "" {
			t.Fatalf("demote once storage answers again: %v %s", r.err, r.errHeader)
		}
	case <-time.After(90 * time.Second):
		t.Fatal("demote did not return after storage answered again")
	}
	et.WaitLeader(t, []*et.Node{n1, n2}, 4*et.TTL)
	if s := n2.El.State(); s.Role != schema.RoleLeader {
		t.Fatalf("after the demotion n2 is %s, want leader", s.Role)
	}
	if d, bound := duck.Longest(), et.TTL+et.Heartbeat; d > bound {
		t.Fatalf("the demotion held the key without serving for %s (bound %s)", d.Round(time.Millisecond), bound)
	}
	waitState(t, s2.D, schema.StorageCapturing, 20*time.Second)
	if got, err := os.ReadFile(filepath.Join(c2.StorageDir(), "modules/late.js")); !strings.Contains(string(got), "cut off") {
		t.Fatalf("the file written while storage was cut off, on the new leader: %q %v", got, err)
	}
}

// TestFlushFailsWhileFilesCannotBePublished: a flush (a demotion's step
// before handing over) must not report success while a file written
// before it could not be uploaded: it answered nil, and the handover went
// on without the file (seen under the race detector, with a stream
// re-electing its leader).
func TestFlushFailsWhileFilesCannotBePublished(t *testing.T) {
	c := start(t)
	write(t, c.c1.StorageDir(), "modules/a.js", []byte("a"))
	waitSame(t, c.c1.StorageDir(), c.c2.ShadowStorageDir(), 10*time.Second)
	// The contents store goes away: no upload can succeed.
	require.NoError(t, c.js.DeleteObjectStore(context.Background(), filestore.BlobsBucket("dc")))
	write(t, c.c1.StorageDir(), "modules/b.js", []byte("written when nothing can be uploaded"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := c.s1.D.Flush(ctx)
	if err == nil {
		t.Fatal("flush reported success with a file it could not upload")
	}
	t.Logf("flush: %v", err)
}

package elector_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	et "github.com/convex-cluster-manager/ccm/services/elector/electortest"
	"github.com/convex-cluster-manager/ccm/shared/natstest"
	"github.com/convex-cluster-manager/ccm/shared/schema"
	"github.com/convex-cluster-manager/ccm/shared/waitfor"
)

const (
	testTTL       = et.TTL
	testHeartbeat = et.Heartbeat
)

type node = et.Node

var (
	startNode  = et.Start
	testConfig = et.Config
	leaders    = et.Leaders
	waitLeader = et.WaitLeader
	others     = et.Others
)

type cluster struct {
	name  string
	url   string
	nodes []*node
	nc    *nats.Conn
	kv    jetstream.KeyValue
}

func startCluster(t *testing.T, n int) *cluster {
	t.Helper()
	srv := natstest.Server(t)
	c := &cluster{name: "test", url: srv.ClientURL()}
	for i := range n {
		c.nodes = append(c.nodes, startNode(t, testConfig(c.name, fmt.Sprintf("n%d", i+1), c.url)))
	}
	c.nc = natstest.Connect(t, c.url)
	js, err := jetstream.New(c.nc)
	require.NoError(t, err)
	if c.kv, err = js.KeyValue(context.Background(), schema.Bucket(c.name)); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestElectsExactlyOneLeader(t *testing.T) {
	c := startCluster(t, 3)
	l := waitLeader(t, c.nodes, testTTL)
	// Hold for several heartbeats: still exactly one, and everyone agrees.
	end := time.Now().Add(4 * testHeartbeat)
	for time.Now().Before(end) {
		if ls := leaders(c.nodes); len(ls) != 1 || ls[0] != l {
			t.Fatalf("leadership moved or split: %v", ls)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, n := range others(c.nodes, l) {
		s := n.El.State()
		if s.Role != schema.RolePassive || s.Leader != l.ID || s.Epoch != l.El.State().Epoch {
			t.Errorf("%s: state %+v, want passive following %s epoch %d", n.ID, s, l.ID, l.El.State().Epoch)
		}
	}
	ent, err := c.kv.Get(context.Background(), schema.KeyLeader)
	require.NoError(t, err)
	var rec schema.LeaderRecord
	json.Unmarshal(ent.Value(), &rec)
	if rec.Node != l.ID || rec.Epoch != l.El.State().Epoch {
		t.Errorf("leader key = %+v, want node %s epoch %d", rec, l.ID, l.El.State().Epoch)
	}
}

func TestDeadLeaderReplacedWithinTTL(t *testing.T) {
	c := startCluster(t, 3)
	old := waitLeader(t, c.nodes, testTTL)
	oldEpoch := old.El.State().Epoch
	old.Stop()
	killed := time.Now()
	l := waitLeader(t, others(c.nodes, old), testTTL+time.Second)
	took := time.Since(killed)
	t.Logf("new leader %s after %s", l.ID, took)
	if took > testTTL+time.Second {
		t.Fatalf("replacement took %s, want within TTL %s + 1s", took, testTTL)
	}
	if e := l.El.State().Epoch; e <= oldEpoch {
		t.Fatalf("new epoch %d not above old %d", e, oldEpoch)
	}
}

func TestDemoteAndPromoteHandOver(t *testing.T) {
	c := startCluster(t, 3)
	l := waitLeader(t, c.nodes, testTTL)
	ctx := context.Background()

	start := time.Now()
	require.NoError(t, l.El.Demote(ctx, ""))
	if l.El.State().Role != schema.RolePassive {
		t.Fatalf("demoted node still %s", l.El.State().Role)
	}
	l2 := waitLeader(t, others(c.nodes, l), time.Second)
	t.Logf("demote: %s -> %s in %s", l.ID, l2.ID, time.Since(start))
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Fatalf("demote handover took %s, want well under a second", d)
	}

	target := others(c.nodes, l2)[0]
	start = time.Now()
	require.NoError(t, target.El.Promote(ctx))
	d := time.Since(start)
	t.Logf("promote %s in %s", target.ID, d)
	if got := waitLeader(t, c.nodes, time.Second); got != target {
		t.Fatalf("leader after promote = %s, want %s", got.ID, target.ID)
	}
	if d > 500*time.Millisecond {
		t.Fatalf("promote handover took %s, want well under a second", d)
	}

	// Demote naming the node to hand over to.
	to := others(c.nodes, target)[1]
	require.NoError(t, target.El.Demote(ctx, to.ID))
	if got := waitLeader(t, c.nodes, time.Second); got != to {
		t.Fatalf("leader after demote --node = %s, want %s", got.ID, to.ID)
	}
	if err := to.El.Demote(ctx, "nosuchnode"); err == nil {
		t.Fatal("demote to an unknown node succeeded")
	}
	if to.El.State().Role != schema.RoleLeader {
		t.Fatal("a refused demote changed the role")
	}
	if err := target.El.Demote(ctx, ""); err == nil {
		t.Fatal("demote of a passive succeeded")
	}
}

func TestRevisionChangedBehindBackStepsDown(t *testing.T) {
	c := startCluster(t, 2)
	l := waitLeader(t, c.nodes, testTTL)
	ent, err := c.kv.Get(context.Background(), schema.KeyLeader)
	require.NoError(t, err)
	// Someone rewrites the key with a valid-looking record of our own node.
	rec := schema.LeaderRecord{Node: "intruder", Epoch: ent.Revision() + 1, RenewedAt: time.Now()}
	b, _ := json.Marshal(rec)
	if _, err := c.kv.Put(context.Background(), schema.KeyLeader, b); err != nil {
		t.Fatal(err)
	}
	changed := time.Now()
	waitfor.Poll(t, testHeartbeat+200*time.Millisecond, 5*time.Millisecond, func() error {
		if s := l.El.State(); s.Role == schema.RoleLeader {
			return fmt.Errorf("leader still leads %s after its key was changed: %+v", time.Since(changed), s)
		}
		return nil
	})
	t.Logf("stepped down after %s: %s", time.Since(changed), l.El.State().Reason)
}

func TestCutOffLeaderFencesItselfFirst(t *testing.T) {
	srv := natstest.Server(t)
	host := srv.Addr().String()
	proxy := natstest.NewProxy(t, host)
	cut := startNode(t, testConfig("test", "n1", proxy.URL()))
	waitLeader(t, []*node{cut}, testTTL)
	rest := []*node{
		startNode(t, testConfig("test", "n2", srv.ClientURL())),
		startNode(t, testConfig("test", "n3", srv.ClientURL())),
	}
	time.Sleep(2 * testHeartbeat)
	if cut.El.State().Role != schema.RoleLeader {
		t.Fatalf("n1 lost leadership before the cut: %+v", cut.El.State())
	}

	var mu sync.Mutex
	var fencedAt, wonAt time.Time
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Bounded: a fencing regression fails here instead of hanging.
		for end := time.Now().Add(3 * testTTL); time.Now().Before(end); {
			now := time.Now()
			mu.Lock()
			if fencedAt.IsZero() && cut.El.State().Role != schema.RoleLeader {
				fencedAt = now
			}
			if wonAt.IsZero() && len(leaders(rest)) > 0 {
				wonAt = now
			}
			finished := !fencedAt.IsZero() && !wonAt.IsZero()
			mu.Unlock()
			if finished {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	proxy.Cut()
	cutAt := time.Now()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if fencedAt.IsZero() || wonAt.IsZero() {
		t.Fatalf("fenced at %v, new leader at %v", fencedAt, wonAt)
	}
	t.Logf("cut n1: fenced after %s, new leader after %s", fencedAt.Sub(cutAt), wonAt.Sub(cutAt))
	if !fencedAt.Before(wonAt) {
		t.Fatalf("n1 fenced itself at +%s, after another node won at +%s", fencedAt.Sub(cutAt), wonAt.Sub(cutAt))
	}
	if r := cut.El.State().Reason; r == "" {
		t.Fatal("no reason recorded for the step-down")
	}
	proxy.Heal()
	// After healing, n1 follows the new leader and does not fight it.
	l := waitLeader(t, rest, testTTL)
	waitfor.Cond(t, testTTL, func() error {
		if s := cut.El.State(); s.Role != schema.RolePassive || s.Leader != l.ID {
			return fmt.Errorf("n1 after healing: %+v, want passive following %s", s, l.ID)
		}
		return nil
	})
}

func TestStaleRoleEventsIgnored(t *testing.T) {
	c := startCluster(t, 2)
	l := waitLeader(t, c.nodes, testTTL)
	p := others(c.nodes, l)[0]
	epoch := l.El.State().Epoch
	publish := func(node string, epoch uint64) {
		t.Helper()
		b, _ := json.Marshal(schema.RoleEvent{Cluster: c.name, Node: node, Role: schema.RoleLeader, Epoch: epoch, At: time.Now()})
		require.NoError(t, c.nc.Publish(schema.RoleSubject(c.name, node), b))
		c.nc.Flush()
	}
	publish("ghost", epoch-1)
	time.Sleep(3 * testHeartbeat)
	if s := l.El.State(); s.Role != schema.RoleLeader || s.Epoch != epoch {
		t.Fatalf("leader after a stale event: %+v", s)
	}
	if s := p.El.State(); s.Leader != l.ID {
		t.Fatalf("passive after a stale event follows %q, want %s", s.Leader, l.ID)
	}
	// A newer epoch from elsewhere, which the key confirms, deposes the
	// leader at once (TestForgedNewerEpochDeposesNoOne: one it does not).
	publish("ghost", natstest.TakeLeaderKey(t, c.nc, c.name, "ghost"))
	waitfor.Poll(t, time.Second, 5*time.Millisecond, func() error {
		if s := l.El.State(); s.Role == schema.RoleLeader {
			return fmt.Errorf("leader ignored a role event from a newer epoch: %+v", s)
		}
		return nil
	})
}

func TestRestartedElectorResumesLeadership(t *testing.T) {
	srv := natstest.Server(t)
	cfg := testConfig("test", "n1", srv.ClientURL())
	n1 := startNode(t, cfg)
	l := waitLeader(t, []*node{n1}, testTTL)
	n2 := startNode(t, testConfig("test", "n2", srv.ClientURL()))
	epoch := l.El.State().Epoch
	n1.Stop()
	again := startNode(t, cfg)
	l = waitLeader(t, []*node{again, n2}, testTTL)
	if l != again || l.El.State().Epoch != epoch {
		t.Fatalf("after restart leader %s epoch %d, want n1 resuming epoch %d", l.ID, l.El.State().Epoch, epoch)
	}
}

// A renewal that times out in a short cut is still delivered when the cut
// heals and moves the key's revision; the next renewal must not read its
// own write as another node's and give the lease up (a 3 s SIGSTOP of the
// leader's nats-server did that in TestClusterLeaderCutFromNATS).
func TestRenewalDeliveredAfterItsTimeoutKeepsTheLease(t *testing.T) {
	srv := natstest.Server(t)
	proxy := natstest.NewProxy(t, srv.Addr().String())
	n1 := startNode(t, testConfig("test", "n1", proxy.URL()))
	l := waitLeader(t, []*node{n1}, testTTL)
	epoch := l.El.State().Epoch
	renewed := l.El.State().Deadline
	waitfor.Poll(t, testTTL, time.Millisecond, func() error {
		if !l.El.State().Deadline.After(renewed) {
			return fmt.Errorf("no renewal since %s", renewed)
		}
		return nil
	}) // a renewal just succeeded: the lease runs from it

	// Held past the next renewal's timeout (a heartbeat after it starts),
	// within the lease.
	proxy.Cut()
	t.Logf("cut at %s", time.Now().Format("15:04:05.000"))
	time.Sleep(2*testHeartbeat + testHeartbeat/2)
	proxy.Heal()
	t.Logf("healed at %s", time.Now().Format("15:04:05.000"))

	time.Sleep(2 * testTTL)
	if s := n1.El.State(); s.Role != schema.RoleLeader || s.Epoch != epoch {
		t.Fatalf("after a cut within the lease: %+v, want leader of epoch %d still", s, epoch)
	}
}

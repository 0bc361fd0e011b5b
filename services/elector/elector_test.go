package elector

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/convex-cluster-manager/ccm/shared/config"
	"github.com/convex-cluster-manager/ccm/shared/daemon"
	"github.com/convex-cluster-manager/ccm/shared/natstest"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

const (
	testTTL       = 2000 * time.Millisecond
	testHeartbeat = 500 * time.Millisecond
	testMargin    = 500 * time.Millisecond
)

// node is one elector running in-process under the daemon runtime.
type node struct {
	id     string
	el     *Elector
	cancel context.CancelFunc
	done   chan struct{} // closed when the elector has returned
}

// stop kills the elector without releasing its key, like kill -9.
func (n *node) stop() {
	n.cancel()
	<-n.done
}

func testConfig(cluster, id string, servers ...string) config.Config {
	c := config.Default()
	c.ClusterID, c.NodeID = cluster, id
	c.NATS.Servers = servers
	c.Election = config.Election{
		LeaderTTLMs:         int(testTTL.Milliseconds()),
		HeartbeatIntervalMs: int(testHeartbeat.Milliseconds()),
		SafetyMarginMs:      int(testMargin.Milliseconds()),
	}
	return c
}

func testLogger() *slog.Logger {
	if os.Getenv("CCM_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startNode runs an elector for cfg until the test ends.
func startNode(t *testing.T, cfg config.Config) *node {
	t.Helper()
	n := &node{id: cfg.NodeID, done: make(chan struct{})}
	runErr := make(chan error, 1)
	got := make(chan *Elector, 1)
	spec := Spec()
	spec.New = func(env daemon.Env) (daemon.Daemon, error) {
		e, err := New(env)
		if err == nil {
			got <- e
		}
		return e, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	go func() {
		defer close(n.done)
		runErr <- daemon.Run(ctx, spec, cfg, testLogger().With("node", cfg.NodeID), "")
	}()
	select {
	case n.el = <-got:
	case err := <-runErr:
		t.Fatalf("elector %s: %v", cfg.NodeID, err)
	case <-time.After(10 * time.Second):
		t.Fatalf("elector %s did not start", cfg.NodeID)
	}
	select {
	case <-n.el.Ready():
	case <-time.After(10 * time.Second):
		t.Fatalf("elector %s not ready", cfg.NodeID)
	}
	t.Cleanup(n.stop)
	return n
}

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
	if err != nil {
		t.Fatal(err)
	}
	if c.kv, err = js.KeyValue(context.Background(), schema.Bucket(c.name)); err != nil {
		t.Fatal(err)
	}
	return c
}

// leaders returns the nodes whose elector says leader, among live ones.
func leaders(nodes []*node) []*node {
	var out []*node
	for _, n := range nodes {
		if n.el.State().Role == schema.RoleLeader {
			out = append(out, n)
		}
	}
	return out
}

// waitLeader waits until exactly one of nodes leads and returns it.
func waitLeader(t *testing.T, nodes []*node, within time.Duration) *node {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if ls := leaders(nodes); len(ls) == 1 {
			return ls[0]
		} else if len(ls) > 1 {
			t.Fatalf("%d leaders at once: %s and %s", len(ls), ls[0].id, ls[1].id)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no leader within %s", within)
	return nil
}

func others(nodes []*node, not *node) []*node {
	var out []*node
	for _, n := range nodes {
		if n != not {
			out = append(out, n)
		}
	}
	return out
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
		s := n.el.State()
		if s.Role != schema.RolePassive || s.Leader != l.id || s.Epoch != l.el.State().Epoch {
			t.Errorf("%s: state %+v, want passive following %s epoch %d", n.id, s, l.id, l.el.State().Epoch)
		}
	}
	ent, err := c.kv.Get(context.Background(), schema.KeyLeader)
	if err != nil {
		t.Fatal(err)
	}
	var rec schema.LeaderRecord
	json.Unmarshal(ent.Value(), &rec)
	if rec.Node != l.id || rec.Epoch != l.el.State().Epoch {
		t.Errorf("leader key = %+v, want node %s epoch %d", rec, l.id, l.el.State().Epoch)
	}
}

func TestDeadLeaderReplacedWithinTTL(t *testing.T) {
	c := startCluster(t, 3)
	old := waitLeader(t, c.nodes, testTTL)
	oldEpoch := old.el.State().Epoch
	old.stop()
	killed := time.Now()
	l := waitLeader(t, others(c.nodes, old), testTTL+time.Second)
	took := time.Since(killed)
	t.Logf("new leader %s after %s", l.id, took)
	if took > testTTL+time.Second {
		t.Fatalf("replacement took %s, want within TTL %s + 1s", took, testTTL)
	}
	if e := l.el.State().Epoch; e <= oldEpoch {
		t.Fatalf("new epoch %d not above old %d", e, oldEpoch)
	}
}

func TestDemoteAndPromoteHandOver(t *testing.T) {
	c := startCluster(t, 3)
	l := waitLeader(t, c.nodes, testTTL)
	ctx := context.Background()

	start := time.Now()
	if err := l.el.Demote(ctx, ""); err != nil {
		t.Fatal(err)
	}
	if l.el.State().Role != schema.RolePassive {
		t.Fatalf("demoted node still %s", l.el.State().Role)
	}
	l2 := waitLeader(t, others(c.nodes, l), time.Second)
	t.Logf("demote: %s -> %s in %s", l.id, l2.id, time.Since(start))
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Fatalf("demote handover took %s, want well under a second", d)
	}

	target := others(c.nodes, l2)[0]
	start = time.Now()
	if err := target.el.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	d := time.Since(start)
	t.Logf("promote %s in %s", target.id, d)
	if got := waitLeader(t, c.nodes, time.Second); got != target {
		t.Fatalf("leader after promote = %s, want %s", got.id, target.id)
	}
	if d > 500*time.Millisecond {
		t.Fatalf("promote handover took %s, want well under a second", d)
	}

	// Demote naming the node to hand over to.
	to := others(c.nodes, target)[1]
	if err := target.el.Demote(ctx, to.id); err != nil {
		t.Fatal(err)
	}
	if got := waitLeader(t, c.nodes, time.Second); got != to {
		t.Fatalf("leader after demote --node = %s, want %s", got.id, to.id)
	}
	if err := to.el.Demote(ctx, "nosuchnode"); err == nil {
		t.Fatal("demote to an unknown node succeeded")
	}
	if to.el.State().Role != schema.RoleLeader {
		t.Fatal("a refused demote changed the role")
	}
	if err := target.el.Demote(ctx, ""); err == nil {
		t.Fatal("demote of a passive succeeded")
	}
}

func TestRevisionChangedBehindBackStepsDown(t *testing.T) {
	c := startCluster(t, 2)
	l := waitLeader(t, c.nodes, testTTL)
	ent, err := c.kv.Get(context.Background(), schema.KeyLeader)
	if err != nil {
		t.Fatal(err)
	}
	// Someone rewrites the key with a valid-looking record of our own node.
	rec := schema.LeaderRecord{Node: "intruder", Epoch: ent.Revision() + 1, RenewedAt: time.Now()}
	b, _ := json.Marshal(rec)
	if _, err := c.kv.Put(context.Background(), schema.KeyLeader, b); err != nil {
		t.Fatal(err)
	}
	changed := time.Now()
	for l.el.State().Role == schema.RoleLeader {
		if time.Since(changed) > testHeartbeat+200*time.Millisecond {
			t.Fatalf("leader still leads %s after its key was changed", time.Since(changed))
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("stepped down after %s: %s", time.Since(changed), l.el.State().Reason)
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
	if cut.el.State().Role != schema.RoleLeader {
		t.Fatalf("n1 lost leadership before the cut: %+v", cut.el.State())
	}

	var mu sync.Mutex
	var fencedAt, wonAt time.Time
	done := make(chan struct{})
	go func() {
		defer close(done)
		for time.Now().Before(time.Now().Add(3 * testTTL)) {
			now := time.Now()
			mu.Lock()
			if fencedAt.IsZero() && cut.el.State().Role != schema.RoleLeader {
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
	if r := cut.el.State().Reason; r == "" {
		t.Fatal("no reason recorded for the step-down")
	}
	proxy.Heal()
	// After healing, n1 follows the new leader and does not fight it.
	l := waitLeader(t, rest, testTTL)
	deadline := time.Now().Add(testTTL)
	for time.Now().Before(deadline) {
		if s := cut.el.State(); s.Role == schema.RolePassive && s.Leader == l.id {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("n1 after healing: %+v, want passive following %s", cut.el.State(), l.id)
}

func TestStaleRoleEventsIgnored(t *testing.T) {
	c := startCluster(t, 2)
	l := waitLeader(t, c.nodes, testTTL)
	p := others(c.nodes, l)[0]
	epoch := l.el.State().Epoch
	publish := func(node string, epoch uint64) {
		t.Helper()
		b, _ := json.Marshal(schema.RoleEvent{Cluster: c.name, Node: node, Role: schema.RoleLeader, Epoch: epoch, At: time.Now()})
		if err := c.nc.Publish(schema.RoleSubject(c.name), b); err != nil {
			t.Fatal(err)
		}
		c.nc.Flush()
	}
	publish("ghost", epoch-1)
	time.Sleep(3 * testHeartbeat)
	if s := l.el.State(); s.Role != schema.RoleLeader || s.Epoch != epoch {
		t.Fatalf("leader after a stale event: %+v", s)
	}
	if s := p.el.State(); s.Leader != l.id {
		t.Fatalf("passive after a stale event follows %q, want %s", s.Leader, l.id)
	}
	// A newer epoch from elsewhere deposes the leader at once.
	publish("ghost", epoch+1000)
	deadline := time.Now().Add(time.Second)
	for l.el.State().Role == schema.RoleLeader {
		if time.Now().After(deadline) {
			t.Fatal("leader ignored a role event from a newer epoch")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRestartedElectorResumesLeadership(t *testing.T) {
	srv := natstest.Server(t)
	cfg := testConfig("test", "n1", srv.ClientURL())
	n1 := startNode(t, cfg)
	n2 := startNode(t, testConfig("test", "n2", srv.ClientURL()))
	l := waitLeader(t, []*node{n1}, testTTL)
	epoch := l.el.State().Epoch
	n1.stop()
	again := startNode(t, cfg)
	l = waitLeader(t, []*node{again, n2}, testTTL)
	if l != again || l.el.State().Epoch != epoch {
		t.Fatalf("after restart leader %s epoch %d, want n1 resuming epoch %d", l.id, l.el.State().Epoch, epoch)
	}
}

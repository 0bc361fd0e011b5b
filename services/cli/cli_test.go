package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/services/cli"
	et "github.com/convex-cluster-manager/ccm/services/elector/electortest"
	"github.com/convex-cluster-manager/ccm/shared/epochlog"
	"github.com/convex-cluster-manager/ccm/shared/natstest"
	"github.com/convex-cluster-manager/ccm/shared/schema"
	"github.com/convex-cluster-manager/ccm/shared/waitfor"
)

// ccm runs the CLI in-process and returns its output and exit code.
func ccm(t *testing.T, args ...string) (string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := cli.Run(ctx, args, &out, &errOut)
	if err != nil {
		errOut.WriteString(err.Error())
	}
	t.Logf("ccm %s -> %d\n%s%s", strings.Join(args, " "), cli.ExitCode(err), out.String(), errOut.String())
	return out.String() + errOut.String(), cli.ExitCode(err)
}

type fixture struct {
	nodes []*et.Node
	conf  map[string]string // node ID -> config file written by ccm init
	url   string            // the NATS server's
}

// startCluster writes each node's config with `ccm init` and runs its elector.
func startCluster(t *testing.T) *fixture {
	t.Helper()
	srv := natstest.Server(t)
	dir := t.TempDir()
	f := &fixture{conf: map[string]string{}, url: srv.ClientURL()}
	for _, id := range []string{"n1", "n2", "n3"} {
		path := filepath.Join(dir, id+".json")
		if out, code := ccm(t, "init", "--config", path, "--cluster-id", "demo", "--node-id", id,
			"--nats-servers", srv.ClientURL(), "--election-leader-ttl-ms", "2000",
			"--election-heartbeat-interval-ms", "500", "--election-safety-margin-ms", "500"); code != 0 {
			t.Fatalf("init %s: %d %s", id, code, out)
		}
		f.conf[id] = path
		cfg := et.Config("demo", id, srv.ClientURL())
		f.nodes = append(f.nodes, et.Start(t, cfg))
	}
	et.WaitLeader(t, f.nodes, et.TTL)
	time.Sleep(100 * time.Millisecond) // every node has written its status
	return f
}

func status(t *testing.T, conf string) cli.ClusterStatus {
	t.Helper()
	out, code := ccm(t, "status", "--json", "--config", conf)
	if code != cli.ExitOK && code != cli.ExitNoLeader { // 7 (no leader serves yet) prints the status too
		t.Fatalf("status exit %d: %s", code, out)
	}
	var st cli.ClusterStatus
	if err := json.NewDecoder(strings.NewReader(out)).Decode(&st); err != nil {
		t.Fatalf("status --json is not JSON: %v\n%s", err, out)
	}
	return st
}

func TestStatusJSON(t *testing.T) {
	f := startCluster(t)
	st := status(t, f.conf["n2"])
	leader := et.Leaders(f.nodes)[0]
	if st.Leader == nil || st.Leader.Node != leader.ID || st.Leader.Epoch != leader.El.State().Epoch {
		t.Fatalf("leader = %+v, want %s epoch %d", st.Leader, leader.ID, leader.El.State().Epoch)
	}
	if st.Leader.LeaseRemainingMs <= 0 || st.Leader.LeaseRemainingMs > et.TTL.Milliseconds() {
		t.Errorf("lease remaining %dms, want within (0, %d]", st.Leader.LeaseRemainingMs, et.TTL.Milliseconds())
	}
	if len(st.Nodes) != 3 {
		t.Fatalf("nodes = %+v, want 3", st.Nodes)
	}
	leaders := 0
	for _, n := range st.Nodes {
		if n.Role == schema.RoleLeader {
			leaders++
			if n.ID != leader.ID {
				t.Errorf("node %s says leader, want %s", n.ID, leader.ID)
			}
		}
	}
	if leaders != 1 {
		t.Errorf("%d nodes with role leader, want 1", leaders)
	}
	out, code := ccm(t, "status", "--config", f.conf["n1"])
	if code != 0 || !strings.Contains(out, "leader "+leader.ID) || !strings.Contains(out, "NODE") {
		t.Errorf("table status: %d %q", code, out)
	}
}

// TestStatusShowsAFrozenBackend: a backend frozen by ccm-backend (its
// leader's changes not shipped within wal.maxUnshippedMs) shows in the
// table and in --json, with the reason, from its node's backend key.
func TestStatusShowsAFrozenBackend(t *testing.T) {
	f := startCluster(t)
	leader := et.Leaders(f.nodes)[0]
	js, err := jetstream.New(natstest.Connect(t, f.url))
	require.NoError(t, err)
	kv, err := js.KeyValue(context.Background(), schema.Bucket("demo"))
	require.NoError(t, err)
	frozen, _ := json.Marshal(schema.BackendStatus{Node: leader.ID, Unit: "convex-backend", State: "active", Frozen: true,
		FrozenMs: 1500, FrozenReason: "ccm-walship does not answer", UpdatedAt: time.Now()})
	if _, err := kv.Put(context.Background(), schema.BackendKey(leader.ID), frozen); err != nil {
		t.Fatal(err)
	}
	for _, n := range status(t, f.conf["n1"]).Nodes {
		if n.ID == leader.ID && (n.Backend == nil || !n.Backend.Frozen || n.Backend.FrozenReason != "ccm-walship does not answer") {
			t.Fatalf("status --json of %s: backend %+v, want frozen with its reason", n.ID, n.Backend)
		}
	}
	out, code := ccm(t, "status", "--config", f.conf["n1"])
	if code != 0 || !strings.Contains(out, "BACKEND FROZEN 1.5s: ccm-walship does not answer") {
		t.Errorf("table status does not show the frozen backend: %d %q", code, out)
	}
}

func TestPromoteAndDemote(t *testing.T) {
	f := startCluster(t)
	old := et.Leaders(f.nodes)[0]
	target := et.Others(f.nodes, old)[0]

	out, code := ccm(t, "promote", "--node", target.ID, "--config", f.conf["n1"])
	if code != 0 || !strings.Contains(out, "handover took") {
		t.Fatalf("promote: %d %s", code, out)
	}
	if got := et.WaitLeader(t, f.nodes, time.Second); got != target {
		t.Fatalf("leader after promote = %s, want %s", got.ID, target.ID)
	}
	if st := status(t, f.conf["n1"]); st.Leader.Node != target.ID {
		t.Fatalf("status leader after promote = %s", st.Leader.Node)
	}

	out, code = ccm(t, "demote", "--config", f.conf["n1"])
	if code != 0 || !strings.Contains(out, "handover took") {
		t.Fatalf("demote: %d %s", code, out)
	}
	if got := et.WaitLeader(t, f.nodes, time.Second); got == target {
		t.Fatalf("demoted %s is still leader", target.ID)
	}

	out, code = ccm(t, "demote", "--node", target.ID, "--config", f.conf["n3"])
	if code != 0 {
		t.Fatalf("demote --node: %d %s", code, out)
	}
	if got := et.WaitLeader(t, f.nodes, time.Second); got != target {
		t.Fatalf("leader after demote --node %s = %s", target.ID, got.ID)
	}
	out, code = ccm(t, "promote", "--node", target.ID, "--config", f.conf["n3"])
	if code != 0 || !strings.Contains(out, "already the leader") {
		t.Fatalf("promote of the leader: %d %s", code, out)
	}

	// ccm history lists the four terms, each switchover with its reason.
	var terms []epochlog.Term
	waitfor.Cond(t, 5*time.Second, func() error {
		out, code := ccm(t, "history", "--json", "--config", f.conf["n2"])
		if code != 0 {
			return fmt.Errorf("exit %d: %s", code, out)
		}
		terms = nil
		if err := json.Unmarshal([]byte(out), &terms); err != nil {
			return err
		}
		if len(terms) != 4 || terms[3].Served.IsZero() {
			return fmt.Errorf("%d terms, want 4, the last serving: %+v", len(terms), terms)
		}
		return nil
	})
	for i, want := range []string{old.ID, target.ID, "", target.ID} {
		if want != "" && terms[i].Node != want {
			t.Errorf("term %d led by %s, want %s", i, terms[i].Node, want)
		}
		if i < 3 && !strings.HasPrefix(terms[i].HowEnded, "switchover: ") {
			t.Errorf("term %d ended %q, want a switchover", i, terms[i].HowEnded)
		}
	}
	if out, code := ccm(t, "history", "--last", "1", "--config", f.conf["n2"]); code != 0 || strings.Count(out, "\n") != 2 || !strings.Contains(out, "leading") {
		t.Errorf("ccm history --last 1: exit %d:\n%s", code, out)
	}
}

func TestErrors(t *testing.T) {
	f := startCluster(t)
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown node promote", []string{"promote", "--node", "n9", "--config", f.conf["n1"]}, cli.ExitUnknownNode, `unknown node "n9"`},
		{"unknown node demote", []string{"demote", "--node", "zz", "--config", f.conf["n1"]}, cli.ExitUnknownNode, "live nodes: n1, n2, n3"},
		{"bad node id", []string{"promote", "--node", "a.b", "--config", f.conf["n1"]}, cli.ExitUsage, `"a.b" is invalid`},
		{"unreachable", []string{"status", "--config", f.conf["n1"], "--nats-servers", "nats://127.0.0.1:1"}, cli.ExitUnreachable, "NATS unreachable"},
		{"unknown cluster", []string{"status", "--config", f.conf["n1"], "--cluster-id", "other"}, cli.ExitUnreachable, `cluster "other"`},
		{"init refuses overwrite", []string{"init", "--config", f.conf["n1"], "--cluster-id", "demo", "--node-id", "n1"}, cli.ExitUsage, "--force"},
		{"init invalid", []string{"init", "--config", filepath.Join(t.TempDir(), "x.json"), "--cluster-id", "demo", "--node-id", "n1", "--vip-netmask", "40"}, cli.ExitUsage, "vip.netmask: invalid value 40"},
		{"bad flag", []string{"status", "--nope"}, cli.ExitUsage, "nope"},
		{"stray argument", []string{"status", "--config", f.conf["n1"], "extra"}, cli.ExitUsage, `unexpected argument "extra"`},
		{"missing config", []string{"status", "--config", "/nonexistent/cluster.json"}, cli.ExitUsage, "/nonexistent/cluster.json"},
		{"unknown command", []string{"stauts"}, cli.ExitUsage, `unknown command "stauts"`},
		{"watch too short", []string{"status", "--watch", "1ms", "--config", f.conf["n1"]}, cli.ExitUsage, "--watch 1ms: at least 250ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, code := ccm(t, tt.args...)
			if code != tt.code || !strings.Contains(out, tt.want) {
				t.Fatalf("exit %d, output %q; want exit %d containing %q", code, out, tt.code, tt.want)
			}
		})
	}
}

// TestNATSSetup: ccm nats-setup writes each node's files and the users',
// and names a bad argument with exit code 2; it refuses to replace an
// existing setup (its keys) without --force.
func TestNATSSetup(t *testing.T) {
	out := filepath.Join(t.TempDir(), "nats")
	got, code := ccm(t, "nats-setup", "--cluster-id", "demo", "--node", "n1=10.0.0.1,n2=10.0.0.2", "--node", "n3=node3.example:4223", "--out", out)
	require.Equal(t, cli.ExitOK, code, got)
	for _, f := range []string{"ca.pem", "ca-key.pem", "n1/nats.conf", "n1/n1.nk", "n1/ccm.env", "n3/server.pem", "users/ccm.nk", "users/monitor.env", "users/ca.pem"} {
		require.FileExists(t, filepath.Join(out, f))
	}
	env, err := os.ReadFile(filepath.Join(out, "n3", "ccm.env"))
	require.NoError(t, err)
	require.Contains(t, string(env), "CCM_NATS_SERVERS=tls://node3.example:4223,tls://10.0.0.1:4222,tls://10.0.0.2:4222", "the node's own server first")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--cluster-id", "demo", "--node", "n1=10.0.0.1", "--out", out}, "exists"},
		{[]string{"--cluster-id", "demo", "--node", "n1=10.0.0.1:0", "--out", out + "2"}, `port "0"`},
		{[]string{"--cluster-id", "de mo", "--node", "n1=10.0.0.1", "--out", out + "2"}, `cluster ID "de mo"`},
		{[]string{"--cluster-id", "demo", "--out", out + "2"}, "no nodes"},
		{[]string{"--cluster-id", "demo", "--node", "n1=10.0.0.1"}, "--out is required"},
	} {
		got, code := ccm(t, append([]string{"nats-setup"}, tc.args...)...)
		require.Equal(t, cli.ExitUsage, code, got)
		require.Contains(t, got, tc.want)
	}
}

func TestVersionAndHelp(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		if out, code := ccm(t, args...); code != cli.ExitOK || !strings.HasPrefix(out, "ccm ") || strings.Count(out, "\n") != 1 {
			t.Errorf("ccm %v: exit %d, %q; want one line naming ccm's version", args, code, out)
		}
	}
	// A command's own flags come before the cluster settings.
	out, code := ccm(t, "status", "-h")
	own, settings := strings.Index(out, "-watch"), strings.Index(out, "CLUSTER SETTINGS")
	if code != cli.ExitOK || own < 0 || settings < own || !strings.Contains(out[settings:], "-nats-servers") || strings.Contains(out[:settings], "-nats-servers") {
		t.Errorf("ccm status -h: exit %d; want its flags (-watch), then the cluster settings (-nats-servers):\n%s", code, out)
	}
}

func TestPauseAndResume(t *testing.T) {
	f := startCluster(t)
	out, code := ccm(t, "pause", "--reason", "kernel upgrade", "--config", f.conf["n1"])
	if code != cli.ExitOK || !strings.HasPrefix(out, "paused") {
		t.Fatalf("ccm pause: exit %d: %s", code, out)
	}
	if out, _ := ccm(t, "status", "--config", f.conf["n2"]); !strings.Contains(out, "PAUSED (maintenance mode)") || !strings.Contains(out, "kernel upgrade") {
		t.Errorf("ccm status of a paused cluster:\n%s", out)
	}
	if st := status(t, f.conf["n3"]); st.Paused == nil || st.Paused.Reason != "kernel upgrade" {
		t.Errorf("ccm status --json of a paused cluster: paused %+v", st.Paused)
	}
	out, code = ccm(t, "resume", "--config", f.conf["n1"])
	if code != cli.ExitOK || !strings.HasPrefix(out, "resumed") {
		t.Fatalf("ccm resume: exit %d: %s", code, out)
	}
	if st := status(t, f.conf["n3"]); st.Paused != nil {
		t.Errorf("ccm status --json after resume: paused %+v", st.Paused)
	}
	// The leader's term in the history notes both.
	waitfor.Cond(t, 5*time.Second, func() error {
		out, _ := ccm(t, "history", "--json", "--config", f.conf["n1"])
		var terms []epochlog.Term
		if err := json.Unmarshal([]byte(out), &terms); err != nil || len(terms) == 0 {
			return fmt.Errorf("history: %v %s", err, out)
		}
		n := terms[len(terms)-1].Notes
		if len(n) != 2 || !strings.HasPrefix(n[0].What, "paused (by ") || !strings.HasSuffix(n[0].What, " kernel upgrade)") || !strings.HasPrefix(n[1].What, "resumed (by ") {
			return fmt.Errorf("notes of the current term: %+v", n)
		}
		return nil
	})
}

// TestStatusExitsNonZeroWithoutAServingLeader: ccm status exits 7 (after
// printing) while no leader serves.
func TestStatusExitsNonZeroWithoutAServingLeader(t *testing.T) {
	f := startCluster(t)
	if out, code := ccm(t, "status", "--config", f.conf["n1"]); code != cli.ExitOK {
		t.Fatalf("ccm status with a serving leader: exit %d:\n%s", code, out)
	}
	for _, n := range f.nodes {
		n.Stop()
	}
	waitfor.Cond(t, 2*et.TTL, func() error {
		out, code := ccm(t, "status", "--config", f.conf["n1"])
		if code != cli.ExitNoLeader || !strings.Contains(out, "no leader") {
			return fmt.Errorf("exit %d, want %d:\n%s", code, cli.ExitNoLeader, out)
		}
		return nil
	})
	// The members whose status expired are shown missing, not forgotten.
	waitfor.Cond(t, 2*et.TTL, func() error {
		st := status(t, f.conf["n1"])
		var missing []string
		for _, n := range st.Nodes {
			if n.Role == cli.RoleMissing {
				missing = append(missing, n.ID)
			}
		}
		if strings.Join(missing, ",") != "n1,n2,n3" {
			return fmt.Errorf("missing %v, want n1, n2 and n3: %+v", missing, st.Nodes)
		}
		return nil
	})
}

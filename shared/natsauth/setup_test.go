package natsauth_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/shared/config"
	"github.com/convex-cluster-manager/ccm/shared/filestore"
	"github.com/convex-cluster-manager/ccm/shared/natsauth"
	"github.com/convex-cluster-manager/ccm/shared/natsconn"
	"github.com/convex-cluster-manager/ccm/shared/natstest"
	"github.com/convex-cluster-manager/ccm/shared/schema"
	"github.com/convex-cluster-manager/ccm/shared/waitfor"
	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

const installDir = "/etc/convex/nats"

// freePort returns a loopback port nothing listens on now.
func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// generated is a cluster's generated files, with its servers running on
// loopback: each node's files where its configuration expects them (the
// install directory is rewritten to the node's output directory).
type generated struct {
	out   string
	setup natsauth.Setup
}

func generate(t *testing.T, nodes int) *generated {
	t.Helper()
	g := &generated{out: filepath.Join(t.TempDir(), "nats"), setup: natsauth.Setup{Cluster: "c", InstallDir: installDir, StoreDir: "/var/lib/nats", OperatorOnNodes: true}}
	for i := range nodes {
		n, err := natsauth.ParseNode("n" + strconv.Itoa(i+1) + "=127.0.0.1:" + strconv.Itoa(freePort(t)) + ":" + strconv.Itoa(freePort(t)))
		require.NoError(t, err)
		g.setup.Nodes = append(g.setup.Nodes, n)
	}
	require.NoError(t, natsauth.Generate(g.setup, g.out, false))
	for _, n := range g.setup.Nodes {
		dir := filepath.Join(g.out, n.ID)
		conf := filepath.Join(dir, natsauth.ServerConfFile)
		b, err := os.ReadFile(conf)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(conf, bytes.ReplaceAll(b, []byte(installDir), []byte(dir)), 0o644))
	}
	var wg = make(chan struct{}, nodes)
	for _, n := range g.setup.Nodes {
		go func() {
			defer func() { wg <- struct{}{} }()
			natstest.FromConfig(t, filepath.Join(g.out, n.ID, natsauth.ServerConfFile), t.TempDir())
		}()
	}
	for range nodes {
		<-wg
	}
	return g
}

// settings reads a generated ccm.env as ccm init would (CCM_* variables
// bound to the setting flags), its paths moved to dir.
func settings(t *testing.T, envFile, dir string) config.NATS {
	t.Helper()
	f, err := os.Open(envFile)
	require.NoError(t, err)
	defer f.Close()
	fs := flag.NewFlagSet("env", flag.ContinueOnError)
	cfg := config.BindSettings(fs)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		require.Truef(t, ok, "%s: line %q", envFile, line)
		name := strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(k, config.EnvPrefix+"_")), "_", "-")
		require.NotNilf(t, fs.Lookup(name), "%s: %s is no setting", envFile, k)
		require.NoError(t, fs.Set(name, strings.ReplaceAll(v, installDir, dir)))
	}
	return cfg.Config().NATS
}

// client connects as user with the settings generated for it.
func (g *generated) client(t *testing.T, user string) *client {
	t.Helper()
	env, dir := filepath.Join(g.out, user, natsauth.EnvFile), filepath.Join(g.out, user)
	if user == natsauth.OperatorUser || user == natsauth.MonitorUser {
		env, dir = filepath.Join(g.out, "users", user+".env"), filepath.Join(g.out, "users")
	}
	nc, err := natsconn.Client(context.Background(), settings(t, env, dir), "test-"+user, 5*time.Second)
	require.NoErrorf(t, err, "connect as %s", user)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	return &client{Perms: natstest.WatchPerms(t, user, nc), nc: nc, js: js}
}

type client struct {
	*natstest.Perms
	nc *nats.Conn
	js jetstream.JetStream
}

func (c *client) publish(subject string, data []byte) func(context.Context) error {
	return func(context.Context) error { return c.nc.Publish(subject, data) }
}

func (c *client) call(node, daemon, verb string) func(context.Context) error {
	return func(ctx context.Context) error {
		_, err := natsconn.Call(ctx, c.nc, "c", node, daemon, verb, nil, time.Second)
		return err
	}
}

func (c *client) subscribe(subject string) func(context.Context) error {
	return func(context.Context) error {
		_, err := c.nc.Subscribe(subject, func(*nats.Msg) {})
		if err == nil {
			err = c.nc.Flush()
		}
		return err
	}
}

// TestGeneratedPermissions runs a three-server cluster from the generated
// configuration (TLS for clients and routes, nkey users) and tries, as
// each user, what its role may and may not do: every attack of issue 13
// from the monitoring user, the operator and another node is refused by
// the server, while what the protocol needs passes; the state attacked is
// unchanged. A client without a user, or without TLS, is not let in.
func TestGeneratedPermissions(t *testing.T) {
	g := generate(t, 3)
	ctx := context.Background()
	n1, n2 := g.client(t, "n1"), g.client(t, "n2")
	op, mon := g.client(t, natsauth.OperatorUser), g.client(t, natsauth.MonitorUser)

	// n1 sets up what its daemons would: the bucket, the WAL stream, the
	// file store, its status, the leader key, a role event, an endpoint.
	waitfor.Cond(t, 30*time.Second, func() error {
		_, err := n1.js.AccountInfo(ctx)
		return err
	})
	kv, err := n1.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: schema.Bucket("c"), Replicas: 3})
	require.NoError(t, err)
	rec, _ := json.Marshal(schema.LeaderRecord{Node: "n1", Since: time.Now(), RenewedAt: time.Now(), LeaderTTLMs: 10000})
	leaderRev, err := kv.Put(ctx, schema.KeyLeader, rec)
	require.NoError(t, err)
	_, err = kv.Put(ctx, schema.NodeKey("n1"), []byte(`{}`))
	require.NoError(t, err)
	wal, err := walstream.Ensure(ctx, n1.js, "c", time.Hour, 3)
	require.NoError(t, err)
	_, err = n1.js.Publish(ctx, walstream.Subject("c"), []byte("frame"))
	require.NoError(t, err)
	_, err = filestore.Open(ctx, n1.js, "c", 3)
	require.NoError(t, err)
	ev, _ := json.Marshal(schema.RoleEvent{Cluster: "c", Node: "n1", Role: schema.RoleLeader, Epoch: leaderRev})
	n1.Allowed(schema.RoleSubject("c", "n1"), n1.publish(schema.RoleSubject("c", "n1"), ev))
	svc, err := micro.AddService(n1.nc, micro.Config{Name: schema.ServiceElector, Version: "0.0.1"})
	require.NoError(t, err)
	defer svc.Stop()
	status := natsconn.Handle(0, nil, func(context.Context, micro.Request) (any, error) { return map[string]string{"role": "leader"}, nil })
	require.NoError(t, svc.AddGroup(schema.EndpointGroup("c", "n1", schema.ServiceElector)).AddEndpoint(schema.VerbStatus, status))

	// The monitoring user reads: the status endpoint, micro discovery, the KV.
	mon.Allowed("status", mon.call("n1", schema.ServiceElector, schema.VerbStatus))
	infos, err := natsconn.CallJSON[map[string]string](ctx, mon.nc, "c", "n1", schema.ServiceElector, schema.VerbStatus, nil, time.Second)
	require.NoError(t, err)
	require.Equal(t, "leader", infos["role"])
	mon.Allowed("$SRV.PING", func(ctx context.Context) error {
		_, err := mon.nc.RequestWithContext(ctx, "$SRV.PING", nil)
		return err
	})
	mkv, err := mon.js.KeyValue(ctx, schema.Bucket("c"))
	require.NoError(t, err)
	ent, err := mkv.Get(ctx, schema.KeyLeader)
	require.NoError(t, err)
	require.Equal(t, leaderRev, ent.Revision())
	keys, err := mkv.Keys(ctx)
	require.NoError(t, err, "ccm status lists the node keys")
	require.Contains(t, keys, schema.NodeKey("n1"))

	forged, _ := json.Marshal(schema.RoleEvent{Cluster: "c", Node: "ghost", Role: schema.RoleLeader, Epoch: 1 << 60})
	jsPut := func(c *client, subject string) func(context.Context) error {
		return func(ctx context.Context) error { _, err := c.js.Publish(ctx, subject, []byte("forged")); return err }
	}
	for _, c := range []*client{mon, op, n2} {
		c.Refused(schema.RoleSubject("c", "n1"), c.publish(schema.RoleSubject("c", "n1"), forged))
		c.Refused(schema.RoleSubject("c", "ghost"), c.publish(schema.RoleSubject("c", "ghost"), forged))
		c.Refused(schema.Endpoint("c", "n1", schema.ServiceBackend, schema.VerbStop), c.call("n1", schema.ServiceBackend, schema.VerbStop))
		c.Refused(schema.Endpoint("c", "n1", schema.ServiceWalapply, schema.VerbRelease), c.call("n1", schema.ServiceWalapply, schema.VerbRelease))
		c.Refused("$KV.ccm_c.nodes.n1", jsPut(c, "$KV.ccm_c.nodes.n1"))
		c.Refused("_INBOX.>", c.subscribe("_INBOX.>"))
		c.Refused("_INBOX_n1.>", c.subscribe("_INBOX_n1.>"))
		c.Refused(schema.NodeEndpoints("c", "n1"), c.subscribe(schema.NodeEndpoints("c", "n1")))
	}
	for _, c := range []*client{mon, op} {
		c.Refused(walstream.Subject("c"), jsPut(c, walstream.Subject("c")))
		c.Refused("$KV.ccm_c.leader", jsPut(c, "$KV.ccm_c.leader"))
		c.Refused("$KV.ccm_files_c.", jsPut(c, "$KV.ccm_files_c.f.bW9kdWxlcy94"))
		c.Refused("$O.ccm_blobs_c.", jsPut(c, "$O.ccm_blobs_c.C.forged"))
		c.Refused("$O.ccm_snap_c.", jsPut(c, "$O.ccm_snap_c.C.forged"))
		c.Refused("$JS.API.STREAM.DELETE."+walstream.Stream("c"), func(ctx context.Context) error {
			return c.js.DeleteStream(ctx, walstream.Stream("c"))
		})
	}
	for _, verb := range []string{schema.VerbPromote, schema.VerbDemote, schema.VerbLeave} {
		mon.Refused(schema.Endpoint("c", "n1", schema.ServiceElector, verb), mon.call("n1", schema.ServiceElector, verb))
		op.Allowed(verb, op.call("n2", schema.ServiceElector, verb))
	}
	// What the protocol needs of another node: a handover's demote of the
	// leader, the position of its target.
	n2.Allowed("demote", n2.call("n1", schema.ServiceElector, schema.VerbDemote))
	n2.Allowed("position", n2.call("n1", schema.ServiceWalapply, schema.VerbPosition))
	n2.Allowed("own status key", jsPut(n2, "$KV.ccm_c.nodes.n2"))
	n2.Allowed("another node's status (ccm status on a node)", n2.call("n1", schema.ServiceElector, schema.VerbStatus))

	// On a node, the ccm CLI acts as the operator (--operator-on-nodes).
	nodeCfg := settings(t, filepath.Join(g.out, "n2", natsauth.EnvFile), filepath.Join(g.out, "n2"))
	require.Equal(t, filepath.Join(g.out, "n2", natsauth.NkeyFile(natsauth.OperatorUser)), nodeCfg.ForCLI().NkeyFile)
	nc, err := natsconn.Client(ctx, nodeCfg.ForCLI(), "cli-on-n2", 5*time.Second)
	require.NoError(t, err)
	defer nc.Close()
	cliOnNode := &client{Perms: natstest.WatchPerms(t, "ccm on n2", nc), nc: nc}
	cliOnNode.Allowed("promote", cliOnNode.call("n1", schema.ServiceElector, schema.VerbPromote))
	n2.Refused(schema.Endpoint("c", "n1", schema.ServiceElector, schema.VerbPromote), n2.call("n1", schema.ServiceElector, schema.VerbPromote))

	// Unchanged: the leader key, the stream (n1's one frame), n1's status.
	ent, err = kv.Get(ctx, schema.KeyLeader)
	require.NoError(t, err)
	require.Equal(t, leaderRev, ent.Revision(), "the leader key was written")
	info, err := wal.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(1), info.State.Msgs, "the WAL stream took a forged message")
	ent, err = kv.Get(ctx, schema.NodeKey("n1"))
	require.NoError(t, err)
	require.Equal(t, "{}", string(ent.Value()))

	// No user, or no TLS: not let in.
	cfg := settings(t, filepath.Join(g.out, "users", natsauth.MonitorUser+".env"), filepath.Join(g.out, "users"))
	anon := cfg
	anon.NkeyFile = ""
	_, err = natsconn.Client(ctx, anon, "anonymous", 2*time.Second)
	require.ErrorContains(t, err, "Authorization Violation")
	plain := cfg
	plain.TLS = config.TLS{}
	plain.Servers = []string{strings.Replace(cfg.Servers[0], "tls://", "nats://", 1)}
	_, err = natsconn.Client(ctx, plain, "plain", 2*time.Second)
	require.Error(t, err, "a client without TLS was let in")
}

// TestGenerateRefuses names the bad value of a setup, and keeps an
// existing output directory (it may hold a cluster's keys).
func TestGenerateRefuses(t *testing.T) {
	for in, want := range map[string]string{
		"n1":          `node "n1": want ID=HOST`,
		"n1=":         `node "n1=": want ID=HOST`,
		"n1=h:99999":  `port "99999"`,
		"n1=h:1:2:3":  `want ID=HOST`,
		"n1=h:4222:x": `port "x"`,
	} {
		_, err := natsauth.ParseNode(in)
		require.ErrorContainsf(t, err, want, "ParseNode(%q)", in)
	}
	base := natsauth.Setup{Cluster: "c", InstallDir: installDir, StoreDir: "/var/lib/nats"}
	for _, tc := range []struct {
		nodes []string
		want  string
	}{
		{nil, "no nodes"},
		{[]string{"n1=a", "n1=b"}, `node ID "n1" given twice`},
		{[]string{"monitor=a"}, `node ID "monitor" is reserved`},
		{[]string{"events=a"}, `node ID "events" is reserved`},
		{[]string{"n.1=a"}, `node ID "n.1"`},
	} {
		s := base
		for _, n := range tc.nodes {
			node, err := natsauth.ParseNode(n)
			require.NoError(t, err)
			s.Nodes = append(s.Nodes, node)
		}
		require.ErrorContains(t, natsauth.Generate(s, filepath.Join(t.TempDir(), "out"), false), tc.want)
	}
	out := filepath.Join(t.TempDir(), "out")
	n1, _ := natsauth.ParseNode("n1=10.0.0.1")
	base.Nodes = []natsauth.Node{n1}
	require.NoError(t, natsauth.Generate(base, out, false))
	seed, err := os.ReadFile(filepath.Join(out, "n1", natsauth.NkeyFile("n1")))
	require.NoError(t, err)
	require.ErrorContains(t, natsauth.Generate(base, out, false), "exists")
	again, _ := os.ReadFile(filepath.Join(out, "n1", natsauth.NkeyFile("n1")))
	require.Equal(t, seed, again, "a refused run changed the keys")
	st, err := os.Stat(filepath.Join(out, "n1", natsauth.NkeyFile("n1")))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "a seed readable by others")
}

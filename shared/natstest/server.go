// Package natstest starts real NATS servers with JetStream inside tests, and
// a TCP proxy that can cut a client off from them.
package natstest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// Server starts an embedded nats-server with JetStream on a random loopback
// port, stopped when the test ends.
func Server(t testing.TB) *server.Server {
	t.Helper()
	s := start(t, options(t, ""))
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready after 10s")
	}
	return s
}

// options are a test server's: loopback, a random client port, JetStream
// in a temporary directory, quiet.
func options(t testing.TB, name string) *server.Options {
	return &server.Options{ServerName: name, Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true}
}

// start runs a server with opts until the test ends.
func start(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("start nats-server %s: %v", opts.ServerName, err)
	}
	if os.Getenv("CCM_TEST_NATS_LOG") != "" {
		opts.NoLog = false
		s.ConfigureLogger()
	}
	go s.Start()
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s
}

// Connect opens a client connection to url, closed when the test ends.
func Connect(t testing.TB, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// Cluster starts n embedded nats-servers named s1…sn, routed to each other
// over loopback, with JetStream, stopped when the test ends; it returns
// once JetStream answers (a meta leader is elected).
func Cluster(t testing.TB, n int) []*server.Server {
	t.Helper()
	ports := make([]int, n)
	var routes []*url.URL
	for i := range ports {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		routes = append(routes, &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", ports[i])})
	}
	servers := make([]*server.Server, n)
	for i := range servers {
		opts := options(t, fmt.Sprintf("s%d", i+1))
		opts.Cluster = server.ClusterOpts{Name: "test", Host: "127.0.0.1", Port: ports[i]}
		opts.Routes = routes
		servers[i] = start(t, opts)
	}
	for _, s := range servers {
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatal("nats-server not ready after 10s")
		}
	}
	js, err := jetstream.New(Connect(t, servers[0].ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := js.AccountInfo(ctx)
		cancel()
		if err == nil {
			return servers
		}
		if time.Now().After(deadline) {
			t.Fatalf("JetStream of the %d-server cluster not ready: %v", n, err)
		}
	}
}

// ConsumerServer waits for the one consumer of stream and returns the
// name of the server it is placed on.
func ConsumerServer(t testing.TB, js jetstream.JetStream, stream string) string {
	t.Helper()
	var hosts []string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		s, err := js.Stream(ctx, stream)
		if err != nil {
			cancel()
			continue
		}
		hosts = hosts[:0]
		for ci := range s.ListConsumers(ctx).Info() {
			if ci.Cluster != nil && ci.Cluster.Leader != "" {
				hosts = append(hosts, ci.Cluster.Leader)
			}
		}
		cancel()
		if len(hosts) == 1 {
			return hosts[0]
		}
	}
	t.Fatalf("not one placed consumer on %s after 10 s: on %v", stream, hosts)
	return ""
}

// DeleteConsumers deletes every consumer of stream: a stopped client's
// ephemeral consumer lingers until its inactivity threshold.
func DeleteConsumers(t testing.TB, js jetstream.JetStream, stream string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	for name := range s.ListConsumers(ctx).Info() {
		if err := s.DeleteConsumer(ctx, name.Name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			t.Fatalf("delete consumer %s of %s: %v", name.Name, stream, err)
		}
	}
}

// Shutdown stops the server of srvs named name (a server lost to a
// partition or a crash), failing the test if there is none.
func Shutdown(t testing.TB, srvs []*server.Server, name string) {
	t.Helper()
	for _, s := range srvs {
		if s.Name() == name {
			s.Shutdown()
			return
		}
	}
	t.Fatalf("no server named %q", name)
}

// FromConfig runs a server from a nats-server configuration file, its
// JetStream store in storeDir, until the test ends, and waits until it
// accepts connections.
func FromConfig(t testing.TB, path, storeDir string) *server.Server {
	t.Helper()
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("nats-server configuration %s: %v", path, err)
	}
	opts.StoreDir, opts.NoLog, opts.NoSigs = storeDir, true, true
	s := start(t, opts)
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatalf("nats-server %s not ready after 10s", opts.ServerName)
	}
	return s
}

// TakeLeaderKey writes the cluster's leader key naming node, as node's
// elector does when it wins (creating the bucket if there is none), and
// returns the epoch it gives node: role events of node for that epoch are
// then confirmed by the key (rolewatch.Confirm), as real ones are.
func TakeLeaderKey(t testing.TB, nc *nats.Conn, cluster, node string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, schema.Bucket(cluster))
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: schema.Bucket(cluster)})
	}
	if err != nil {
		t.Fatalf("leader key bucket: %v", err)
	}
	rec, _ := json.Marshal(schema.LeaderRecord{Node: node, Since: time.Now(), RenewedAt: time.Now(), LeaderTTLMs: time.Minute.Milliseconds()})
	rev, err := kv.Put(ctx, schema.KeyLeader, rec)
	if err != nil {
		t.Fatalf("take the leader key for %s: %v", node, err)
	}
	return rev
}

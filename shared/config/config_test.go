package config

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func valid() Config {
	c := Default()
	c.ClusterID, c.NodeID = "prod_1", "node-a"
	return c
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name     string
		mutate   func(*Config)
		wantPath string // "" means valid
	}{
		{"defaults with ids", func(c *Config) {}, ""},
		{"missing cluster", func(c *Config) { c.ClusterID = "" }, "clusterId"},
		{"cluster with dot", func(c *Config) { c.ClusterID = "a.b" }, "clusterId"},
		{"cluster with wildcard", func(c *Config) { c.ClusterID = "a*" }, "clusterId"},
		{"cluster too long", func(c *Config) { c.ClusterID = strings.Repeat("a", 65) }, "clusterId"},
		{"node with space", func(c *Config) { c.NodeID = "node a" }, "nodeId"},
		{"missing node", func(c *Config) { c.NodeID = "" }, "nodeId"},
		{"no servers", func(c *Config) { c.NATS.Servers = nil }, "nats.servers"},
		{"server not a url", func(c *Config) { c.NATS.Servers = []string{"nats://ok:4222", "::"} }, "nats.servers[1]"},
		{"server bad scheme", func(c *Config) { c.NATS.Servers = []string{"http://h:4222"} }, "nats.servers[0]"},
		{"tls server", func(c *Config) { c.NATS.Servers = []string{"tls://h:4222"} }, ""},
		{"cert without key", func(c *Config) { c.NATS.TLS.CertFile = "/c.pem" }, "nats.tls.keyFile"},
		{"replicas 0", func(c *Config) { c.NATS.Replicas = 0 }, "nats.replicas"},
		{"replicas 6", func(c *Config) { c.NATS.Replicas = 6 }, "nats.replicas"},
		{"vip ok", func(c *Config) { c.VIP.Address = "10.1.2.3" }, ""},
		{"vip ipv6", func(c *Config) { c.VIP.Address = "fe80::1" }, "vip.address"},
		{"vip garbage", func(c *Config) { c.VIP.Address = "10.1.2" }, "vip.address"},
		{"vip bad interface", func(c *Config) { c.VIP.Address = "10.1.2.3"; c.VIP.Interface = "eth0/1" }, "vip.interface"},
		{"vip long interface", func(c *Config) { c.VIP.Address = "10.1.2.3"; c.VIP.Interface = "abcdefghijklmnop" }, "vip.interface"},
		{"arp count 0", func(c *Config) { c.VIP.ARPCount = 0 }, "vip.arpCount"},
		{"arp repeat negative", func(c *Config) { c.VIP.ARPRepeatMs = -1 }, "vip.arpRepeatMs"},
		{"netmask 0", func(c *Config) { c.VIP.Netmask = 0 }, "vip.netmask"},
		{"netmask 33", func(c *Config) { c.VIP.Netmask = 33 }, "vip.netmask"},
		{"netmask 32", func(c *Config) { c.VIP.Netmask = 32 }, ""},
		{"heartbeat too small", func(c *Config) { c.Election.HeartbeatIntervalMs = 50 }, "election.heartbeatIntervalMs"},
		{"margin too small", func(c *Config) { c.Election.SafetyMarginMs = 10 }, "election.safetyMarginMs"},
		{"ttl equal heartbeat", func(c *Config) { c.Election.LeaderTTLMs = 3000 }, "election.leaderTtlMs"},
		{"ttl just below margin", func(c *Config) { c.Election.LeaderTTLMs = 6999 }, "election.leaderTtlMs"},
		{"ttl exactly enough", func(c *Config) { c.Election.LeaderTTLMs = 7000 }, ""},
		{"short ttl", func(c *Config) {
			c.Election = Election{LeaderTTLMs: 3000, HeartbeatIntervalMs: 1000, SafetyMarginMs: 1000, MaxLagTXIDs: 5}
		}, ""},
		{"negative max lag", func(c *Config) { c.Election.MaxLagTXIDs = -1 }, "election.maxLagTxids"},
		{"retention not duration", func(c *Config) { c.WAL.StreamRetention = "1 day" }, "wal.streamRetention"},
		{"retention too short", func(c *Config) { c.WAL.StreamRetention = "10s" }, "wal.streamRetention"},
		{"snapshot interval", func(c *Config) { c.WAL.SnapshotIntervalMs = 10 }, "wal.snapshotIntervalMs"},
		{"snapshot keep 0", func(c *Config) { c.WAL.SnapshotKeep = 0 }, "wal.snapshotKeep"},
		{"storage reconcile 10ms", func(c *Config) { c.Storage.ReconcileIntervalMs = 10 }, "storage.reconcileIntervalMs"},
		{"storage sync timeout 0", func(c *Config) { c.Storage.SyncTimeoutMs = 0 }, "storage.syncTimeoutMs"},
		{"hook relative", func(c *Config) { c.Hooks.OnRoleChange = "notify.sh" }, "hooks.onRoleChange"},
		{"hook timeout 0", func(c *Config) { c.Hooks.TimeoutMs = 0 }, "hooks.timeoutMs"},
		{"replica relative", func(c *Config) { c.WAL.ReplicaPath = "replica" }, "wal.replicaPath"},
		{"replica equals data", func(c *Config) { c.WAL.ReplicaPath = "/var/lib/convex/data/" }, "wal.replicaPath"},
		{"service name", func(c *Config) { c.Backend.ServiceName = "convex backend" }, "backend.serviceName"},
		{"health not url", func(c *Config) { c.Backend.HealthEndpoint = "localhost:3210" }, "backend.healthEndpoint"},
		{"health ftp", func(c *Config) { c.Backend.HealthEndpoint = "ftp://h/version" }, "backend.healthEndpoint"},
		{"capture too fast", func(c *Config) { c.WAL.CaptureIntervalMs = 1 }, "wal.captureIntervalMs"},
		{"capture too slow", func(c *Config) { c.WAL.CaptureIntervalMs = 5000 }, "wal.captureIntervalMs"},
		{"unshipped bound too small", func(c *Config) { c.WAL.MaxUnshippedMs = 10 }, "wal.maxUnshippedMs"},
		{"unshipped bound beyond the lease", func(c *Config) { c.WAL.MaxUnshippedMs = c.Election.LeaderTTLMs + 1 }, "wal.maxUnshippedMs"},
		{"db file with dir", func(c *Config) { c.Backend.DBFile = "a/db.sqlite3" }, "backend.dbFile"},
		{"db file empty", func(c *Config) { c.Backend.DBFile = "" }, "backend.dbFile"},
		{"start grace too short", func(c *Config) { c.Backend.StartGraceMs = 10 }, "backend.startGraceMs"},
		{"max failures 0", func(c *Config) { c.Backend.MaxFailures = 0 }, "backend.maxFailures"},
		{"data relative", func(c *Config) { c.Backend.DataPath = "./data" }, "backend.dataPath"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid()
			tt.mutate(&c)
			err := c.Validate()
			if tt.wantPath == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("Validate() = %v, want a FieldError for %s", err, tt.wantPath)
			}
			if fe.Path != tt.wantPath {
				t.Fatalf("error path = %q, want %q (%v)", fe.Path, tt.wantPath, err)
			}
			if !strings.Contains(err.Error(), tt.wantPath) || fe.Allowed == "" {
				t.Fatalf("error %q does not name the field and what is allowed", err)
			}
		})
	}
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cluster.json")
	require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
	return p
}

func parse(t *testing.T, args ...string) (Config, error) {
	t.Helper()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(new(strings.Builder))
	return Bind(fs).Parse(args)
}

func TestParsePrecedence(t *testing.T) {
	p := writeFile(t, `{"clusterId":"c1","nodeId":"file",
		"nats":{"servers":["nats://a:4222","nats://b:4222"]},
		"election":{"leaderTtlMs":20000}}`)
	t.Setenv("CCM_NODE_ID", "env")
	t.Setenv("CCM_ELECTION_LEADER_TTL_MS", "15000")

	c, err := parse(t, "-config", p, "-election-leader-ttl-ms", "12000")
	require.NoError(t, err)
	if c.ClusterID != "c1" {
		t.Errorf("clusterId = %q, want c1 from the file", c.ClusterID)
	}
	if c.NodeID != "env" {
		t.Errorf("nodeId = %q, want env over file", c.NodeID)
	}
	if c.Election.LeaderTTLMs != 12000 {
		t.Errorf("leaderTtlMs = %d, want the flag's 12000", c.Election.LeaderTTLMs)
	}
	if got := strings.Join(c.NATS.Servers, " "); got != "nats://a:4222 nats://b:4222" {
		t.Errorf("servers = %q, want the file's two (not appended to the default)", got)
	}
	if c.Election.HeartbeatIntervalMs != 3000 || c.Backend.ServiceName != "convex-backend" {
		t.Errorf("defaults not kept: %+v", c)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, body string
		args       []string
		want       string
	}{
		{"unknown top-level", `{"clusterId":"c","nodeId":"n","clusterID":"x"}`, nil, `unknown field "clusterID"`},
		{"unknown nested", `{"clusterId":"c","nodeId":"n","election":{"ttl":5}}`, nil, `unknown field "election.ttl"`},
		{"unknown section", `{"clusterId":"c","nodeId":"n","foo":{"a":1}}`, nil, `unknown field "foo"`},
		{"string for number", `{"clusterId":"c","nodeId":"n","vip":{"netmask":"24"}}`, nil, `vip.netmask: "24" is not a number`},
		{"fraction", `{"clusterId":"c","nodeId":"n","vip":{"netmask":2.5}}`, nil, `vip.netmask: 2.5 is not a whole number`},
		{"number for string", `{"clusterId":7,"nodeId":"n"}`, nil, `clusterId: 7 is not a string`},
		{"list of numbers", `{"clusterId":"c","nodeId":"n","nats":{"servers":[1]}}`, nil, `nats.servers: element 0: 1 is not a string`},
		{"broken json", `{"clusterId":`, nil, `invalid JSON`},
		{"invalid value", `{"clusterId":"c","nodeId":"n","vip":{"netmask":40}}`, nil, `vip.netmask: invalid value 40`},
		{"bad flag value", `{"clusterId":"c","nodeId":"n"}`, []string{"-vip-netmask", "x"}, `vip-netmask`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeFile(t, tt.body)
			_, err := parse(t, append([]string{"-config", p}, tt.args...)...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestParseMissingFile(t *testing.T) {
	_, err := parse(t, "-config", filepath.Join(t.TempDir(), "nope.json"), "-cluster-id", "c", "-node-id", "n")
	if err == nil || !strings.Contains(err.Error(), "nope.json") {
		t.Fatalf("explicit missing file: err = %v, want an error naming it", err)
	}
}

func TestWrite(t *testing.T) {
	p := filepath.Join(t.TempDir(), "etc", "cluster.json")
	c := valid()
	require.NoError(t, Write(p, c, false))
	if err := Write(p, c, false); !errors.Is(err, ErrExists) {
		t.Fatalf("second write without force: err = %v, want ErrExists", err)
	}
	c.NodeID = "node-b"
	require.NoError(t, Write(p, c, true))
	got, err := parse(t, "-config", p)
	require.NoError(t, err)
	if got.NodeID != "node-b" || got.ClusterID != "prod_1" {
		t.Fatalf("round trip = %+v", got)
	}
	bad := c
	bad.VIP.Netmask = 0
	if err := Write(p, bad, true); err == nil {
		t.Fatal("Write accepted an invalid config")
	}
}

func TestFlagNames(t *testing.T) {
	tests := map[string]string{
		"clusterId":                    "cluster-id",
		"election.leaderTtlMs":         "election-leader-ttl-ms",
		"nats.tls.caFile":              "nats-tls-ca-file",
		"election.heartbeatIntervalMs": "election-heartbeat-interval-ms",
	}
	for path, want := range tests {
		if got := (field{path: path}).flagName(); got != want {
			t.Errorf("flagName(%q) = %q, want %q", path, got, want)
		}
	}
}

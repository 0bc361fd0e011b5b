// Package config holds the cluster configuration shared by every ccm binary:
// the JSON schema of /etc/convex/cluster.json, its defaults, its flag and
// environment overrides and its validation.
package config

import (
	"fmt"
	"path/filepath"
	"time"
)

// DefaultPath is where daemons and the CLI look for the configuration file.
const DefaultPath = "/etc/convex/cluster.json"

// EnvPrefix prefixes every environment variable that overrides a setting,
// e.g. CCM_ELECTION_LEADER_TTL_MS.
const EnvPrefix = "CCM"

// Config is one node's view of the cluster configuration.
type Config struct {
	ClusterID string   `json:"clusterId"`
	NodeID    string   `json:"nodeId"`
	NATS      NATS     `json:"nats"`
	VIP       VIP      `json:"vip"`
	Election  Election `json:"election"`
	WAL       WAL      `json:"wal"`
	Backend   Backend  `json:"backend"`
	Storage   Storage  `json:"storage"`
	Hooks     Hooks    `json:"hooks"`
}

// NATS says how to reach the NATS cluster that carries all coordination.
type NATS struct {
	Servers     []string `json:"servers"`
	Credentials string   `json:"credentials"`
	// NkeyFile is the nkey seed of this node's NATS user (written by
	// `ccm nats-setup`); an alternative to Credentials.
	NkeyFile string `json:"nkeyFile,omitempty"`
	// InboxPrefix replaces _INBOX as the prefix of reply subjects: a user
	// allowed to subscribe only under its own prefix cannot read the
	// replies and JetStream deliveries of others.
	InboxPrefix string `json:"inboxPrefix,omitempty"`
	// CLI, when its NkeyFile is set, is the NATS user the ccm CLI acts as
	// on this node (the operator's), instead of the node's.
	CLI CLIUser `json:"cli,omitzero"`
	TLS TLS     `json:"tls"`
	// Replicas is the JetStream replica count of ccm's buckets and streams;
	// it should equal the number of NATS servers (3 in production).
	Replicas int `json:"replicas"`
}

// CLIUser is the NATS user of the ccm CLI.
type CLIUser struct {
	NkeyFile    string `json:"nkeyFile,omitempty"`
	InboxPrefix string `json:"inboxPrefix,omitempty"`
}

// ForCLI is n as the ccm CLI connects: as the CLI user when one is set.
func (n NATS) ForCLI() NATS {
	if n.CLI.NkeyFile != "" {
		n.Credentials, n.NkeyFile, n.InboxPrefix = "", n.CLI.NkeyFile, n.CLI.InboxPrefix
	}
	return n
}

// TLS names the PEM files for a TLS connection to NATS; all empty means plain TCP
// unless a server URL uses the tls:// scheme.
type TLS struct {
	CAFile   string `json:"caFile"`
	CertFile string `json:"certFile"`
	KeyFile  string `json:"keyFile"`
}

// VIP is the floating address that follows the leader.
type VIP struct {
	Address   string `json:"address"`
	Netmask   int    `json:"netmask"`
	Interface string `json:"interface"`
	// ARPCount is the number of gratuitous ARPs in each burst; a second
	// burst follows ARPRepeatMs later to correct caches that missed the first.
	ARPCount    int `json:"arpCount"`
	ARPRepeatMs int `json:"arpRepeatMs"`
}

// Election tunes the leader lease.
type Election struct {
	LeaderTTLMs         int `json:"leaderTtlMs"`
	HeartbeatIntervalMs int `json:"heartbeatIntervalMs"`
	// SafetyMarginMs is how long before the lease can expire on the server
	// that a leader which could not renew steps down locally.
	SafetyMarginMs int `json:"safetyMarginMs"`
	// MaxLagTXIDs is how far behind the WAL stream's end a passive may be
	// and still campaign; promotion drains the rest before serving.
	MaxLagTXIDs int `json:"maxLagTxids"`
	// MaxLagBytes is the same bound in bytes of LTX not yet applied,
	// counting a file still in flight whole: a promotion must apply it
	// before serving.
	MaxLagBytes int `json:"maxLagBytes"`
}

// WAL configures replication.
type WAL struct {
	StreamRetention    string `json:"streamRetention"`
	SnapshotIntervalMs int    `json:"snapshotIntervalMs"`
	ReplicaPath        string `json:"replicaPath"`
	// SnapshotKeep is how many snapshots the Object Store keeps.
	SnapshotKeep int `json:"snapshotKeep"`
	// CaptureIntervalMs is how often the leader looks for new WAL frames.
	CaptureIntervalMs int `json:"captureIntervalMs"`
	// VerifyIntervalMs is how often every node reads its whole database
	// (the leader's, a passive's shadow) and compares it with the page
	// sums of its position, as ccm verify does; 0: never.
	VerifyIntervalMs int `json:"verifyIntervalMs"`
	// MaxUnshippedMs bounds how long the leader's backend may go on
	// acknowledging writes while committed changes wait to be appended to
	// the WAL stream: past it the backend is frozen (not stopped) until
	// shipping catches up or the lease ends. 0 turns the bound off.
	MaxUnshippedMs int `json:"maxUnshippedMs"`
}

// Backend describes the Convex backend unit that the leader runs.
type Backend struct {
	ServiceName    string `json:"serviceName"`
	HealthEndpoint string `json:"healthEndpoint"`
	DataPath       string `json:"dataPath"`
	// DBFile is the database file name inside DataPath (and ReplicaPath).
	DBFile string `json:"dbFile"`
	// StartGraceMs is how long a starting backend may take to answer its
	// health check (the real backend loads for tens of seconds).
	StartGraceMs int `json:"startGraceMs"`
	// MaxFailures is how many failed health checks in a row make a ready
	// leader hand over to another node.
	MaxFailures int `json:"maxFailures"`
}

// Storage configures the replication of the backend's storage/ directory
// (modules, uploaded files, search segments, exports).
type Storage struct {
	// ReconcileIntervalMs is how often the leader compares the whole tree
	// with the manifest, a backstop behind inotify.
	ReconcileIntervalMs int `json:"reconcileIntervalMs"`
	// SyncTimeoutMs is how long a promotion waits for the node's storage
	// mirror to hold every file of the newest manifest.
	SyncTimeoutMs int `json:"syncTimeoutMs"`
}

// Hooks are executables ccm-elector runs on its own events, like
// Patroni's callbacks: with the action, the role and the cluster as
// arguments and the details in CCM_* variables, one at a time, each
// killed after TimeoutMs. They never hold up the election.
type Hooks struct {
	OnStart      string `json:"onStart,omitempty"`      // the elector started and knows its role
	OnStop       string `json:"onStop,omitempty"`       // the elector is stopping
	OnRoleChange string `json:"onRoleChange,omitempty"` // the node's role changed
	TimeoutMs    int    `json:"timeoutMs"`
}

// Timeout bounds one hook run.
func (h Hooks) Timeout() time.Duration { return ms(h.TimeoutMs) }

// Default returns the configuration with every default filled in.
func Default() Config {
	return Config{
		NATS:     NATS{Servers: []string{"nats://127.0.0.1:4222"}, Replicas: 1},
		VIP:      VIP{Netmask: 24, Interface: "eth0", ARPCount: 3, ARPRepeatMs: 2000},
		Election: Election{LeaderTTLMs: 10000, HeartbeatIntervalMs: 3000, SafetyMarginMs: 1000, MaxLagTXIDs: 500, MaxLagBytes: 64 << 20},
		WAL:      WAL{StreamRetention: "24h", SnapshotIntervalMs: 3600000, ReplicaPath: "/var/lib/convex/replica", CaptureIntervalMs: 20, VerifyIntervalMs: 3600000, SnapshotKeep: 3, MaxUnshippedMs: 1000},
		Backend: Backend{
			ServiceName:    "convex-backend",
			HealthEndpoint: "http://localhost:3210/version",
			DataPath:       "/var/lib/convex/data",
			DBFile:         "db.sqlite3",
			StartGraceMs:   120000,
			MaxFailures:    5,
		},
		Storage: Storage{ReconcileIntervalMs: 60000, SyncTimeoutMs: 300000},
		Hooks:   Hooks{TimeoutMs: 30000},
	}
}

// LeaderTTL is the lifetime of the leader key without renewal.
func (e Election) LeaderTTL() time.Duration { return ms(e.LeaderTTLMs) }

// Heartbeat is the interval at which the leader renews its lease.
func (e Election) Heartbeat() time.Duration { return ms(e.HeartbeatIntervalMs) }

// SafetyMargin is how long before server-side expiry a leader fences itself.
func (e Election) SafetyMargin() time.Duration { return ms(e.SafetyMarginMs) }

// DBPath is the backend's database file.
func (b Backend) DBPath() string { return filepath.Join(b.DataPath, b.DBFile) }

// ShadowPath is the passive's copy of the database.
func (c Config) ShadowPath() string { return filepath.Join(c.WAL.ReplicaPath, c.Backend.DBFile) }

// StorageDir is the backend's storage tree, beside its database.
func (c Config) StorageDir() string { return filepath.Join(c.Backend.DataPath, "storage") }

// ShadowStorageDir is the passive's mirror of the storage tree.
func (c Config) ShadowStorageDir() string { return filepath.Join(c.WAL.ReplicaPath, "storage") }

// SetAsideDir is where a promotion at epoch moves what it replaces in the
// data path: an old leader's unreplicated tail is set aside, never merged.
func (b Backend) SetAsideDir(epoch uint64, at time.Time) string {
	return filepath.Join(b.DataPath, ".ccm-set-aside", fmt.Sprintf("epoch-%d-%s", epoch, at.UTC().Format("20060102T150405Z")))
}

// StartGrace is how long a starting backend has to pass its health check.
func (b Backend) StartGrace() time.Duration { return ms(b.StartGraceMs) }

// ReconcileInterval is how often the leader compares the whole storage tree.
func (s Storage) ReconcileInterval() time.Duration { return ms(s.ReconcileIntervalMs) }

// SyncTimeout bounds a promotion's wait for the storage mirror.
func (s Storage) SyncTimeout() time.Duration { return ms(s.SyncTimeoutMs) }

// CaptureInterval is how often the leader looks for new WAL frames.
func (w WAL) CaptureInterval() time.Duration { return ms(w.CaptureIntervalMs) }

// MaxUnshipped is wal.maxUnshippedMs (0: no bound).
func (w WAL) MaxUnshipped() time.Duration { return ms(w.MaxUnshippedMs) }

// SnapshotInterval is the time between full snapshots.
func (w WAL) SnapshotInterval() time.Duration { return ms(w.SnapshotIntervalMs) }

// VerifyInterval is wal.verifyIntervalMs (0: no periodic check).
func (w WAL) VerifyInterval() time.Duration { return ms(w.VerifyIntervalMs) }

// Retention is the WAL stream's retention (valid after Validate).
func (w WAL) Retention() time.Duration {
	d, _ := time.ParseDuration(w.StreamRetention)
	return d
}

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

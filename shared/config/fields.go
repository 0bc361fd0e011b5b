package config

import (
	"strings"
	"unicode"
)

// field is one leaf of the JSON schema, addressable by its dotted JSON path
// and bound to a flag named after that path.
type field struct {
	path  string // JSON path, e.g. "election.leaderTtlMs"
	usage string
	str   *string
	num   *int
	list  *[]string
}

// flagName turns a JSON path into a flag name: "election.leaderTtlMs" becomes
// "election-leader-ttl-ms" (and so env CCM_ELECTION_LEADER_TTL_MS).
func (f field) flagName() string {
	var b strings.Builder
	prevLower := false
	for _, r := range f.path {
		switch {
		case r == '.':
			b.WriteByte('-')
			prevLower = false
		case unicode.IsUpper(r):
			if prevLower {
				b.WriteByte('-')
			}
			b.WriteRune(unicode.ToLower(r))
			prevLower = false
		default:
			b.WriteRune(r)
			prevLower = unicode.IsLower(r) || unicode.IsDigit(r)
		}
	}
	return b.String()
}

// fields lists every setting of c, in schema order.
func (c *Config) fields() []field {
	return []field{
		{path: "clusterId", str: &c.ClusterID, usage: "cluster ID (letters, digits, '-' and '_')"},
		{path: "nodeId", str: &c.NodeID, usage: "this node's ID (letters, digits, '-' and '_')"},
		{path: "nats.servers", list: &c.NATS.Servers, usage: "NATS server URLs, comma-separated"},
		{path: "nats.credentials", str: &c.NATS.Credentials, usage: "NATS credentials (.creds) file"},
		{path: "nats.nkeyFile", str: &c.NATS.NkeyFile, usage: "NATS nkey seed file: the NATS user (see ccm nats-setup)"},
		{path: "nats.inboxPrefix", str: &c.NATS.InboxPrefix, usage: "prefix of reply subjects, the user's own (empty: _INBOX)"},
		{path: "nats.cli.nkeyFile", str: &c.NATS.CLI.NkeyFile, usage: "NATS nkey seed the ccm CLI acts as on this node (the operator's; empty: the node's)"},
		{path: "nats.cli.inboxPrefix", str: &c.NATS.CLI.InboxPrefix, usage: "prefix of the ccm CLI's reply subjects (with nats.cli.nkeyFile)"},
		{path: "nats.tls.caFile", str: &c.NATS.TLS.CAFile, usage: "CA bundle to verify NATS servers"},
		{path: "nats.tls.certFile", str: &c.NATS.TLS.CertFile, usage: "client certificate for NATS"},
		{path: "nats.tls.keyFile", str: &c.NATS.TLS.KeyFile, usage: "client key for NATS"},
		{path: "nats.replicas", num: &c.NATS.Replicas, usage: "JetStream replicas for ccm's buckets and streams (1-5)"},
		{path: "vip.address", str: &c.VIP.Address, usage: "floating IPv4 address (empty: no VIP)"},
		{path: "vip.netmask", num: &c.VIP.Netmask, usage: "VIP prefix length (1-32)"},
		{path: "vip.interface", str: &c.VIP.Interface, usage: "interface that carries the VIP"},
		{path: "vip.arpCount", num: &c.VIP.ARPCount, usage: "gratuitous ARPs per burst on acquiring the VIP (1-20)"},
		{path: "vip.arpRepeatMs", num: &c.VIP.ARPRepeatMs, usage: "delay of the second ARP burst in ms (0: none)"},
		{path: "election.leaderTtlMs", num: &c.Election.LeaderTTLMs, usage: "leader lease TTL in ms"},
		{path: "election.heartbeatIntervalMs", num: &c.Election.HeartbeatIntervalMs, usage: "lease renewal interval in ms"},
		{path: "election.safetyMarginMs", num: &c.Election.SafetyMarginMs, usage: "a leader that cannot renew steps down this long before the lease expires, in ms"},
		{path: "election.maxLagTxids", num: &c.Election.MaxLagTXIDs, usage: "a passive more than this many TXIDs behind the WAL stream does not campaign"},
		{path: "election.maxLagBytes", num: &c.Election.MaxLagBytes, usage: "a passive more than this many bytes of LTX behind the WAL stream (a file in flight counted whole) does not campaign"},
		{path: "wal.streamRetention", str: &c.WAL.StreamRetention, usage: "how long the WAL stream keeps changes (Go duration)"},
		{path: "wal.snapshotIntervalMs", num: &c.WAL.SnapshotIntervalMs, usage: "interval between full snapshots in ms"},
		{path: "wal.snapshotKeep", num: &c.WAL.SnapshotKeep, usage: "snapshots kept in the Object Store (1-100)"},
		{path: "wal.replicaPath", str: &c.WAL.ReplicaPath, usage: "directory of the shadow database on passives"},
		{path: "wal.captureIntervalMs", num: &c.WAL.CaptureIntervalMs, usage: "how often the leader captures new WAL frames, in ms (5-1000)"},
		{path: "wal.verifyIntervalMs", num: &c.WAL.VerifyIntervalMs, usage: "how often each node checks its whole database against its replication position, in ms (0: never; else at least 60000)"},
		{path: "wal.maxUnshippedMs", num: &c.WAL.MaxUnshippedMs, usage: "the leader's backend is frozen while committed changes wait longer than this to be shipped, in ms (0: never; else 100-lease TTL)"},
		{path: "backend.serviceName", str: &c.Backend.ServiceName, usage: "systemd unit of the Convex backend"},
		{path: "backend.healthEndpoint", str: &c.Backend.HealthEndpoint, usage: "backend health URL"},
		{path: "backend.dataPath", str: &c.Backend.DataPath, usage: "backend data directory"},
		{path: "backend.dbFile", str: &c.Backend.DBFile, usage: "database file name in dataPath and replicaPath"},
		{path: "backend.startGraceMs", num: &c.Backend.StartGraceMs, usage: "time a starting backend has to pass its health check, in ms"},
		{path: "backend.maxFailures", num: &c.Backend.MaxFailures, usage: "failed health checks in a row before the leader hands over"},
		{path: "storage.reconcileIntervalMs", num: &c.Storage.ReconcileIntervalMs, usage: "how often the leader compares its whole storage tree with the manifest, in ms"},
		{path: "storage.syncTimeoutMs", num: &c.Storage.SyncTimeoutMs, usage: "how long a promotion waits for the storage mirror, in ms"},
		{path: "hooks.onStart", str: &c.Hooks.OnStart, usage: "executable run when ccm-elector has started (empty: none)"},
		{path: "hooks.onStop", str: &c.Hooks.OnStop, usage: "executable run when ccm-elector stops (empty: none)"},
		{path: "hooks.onRoleChange", str: &c.Hooks.OnRoleChange, usage: "executable run when the node's role changes (empty: none)"},
		{path: "hooks.timeoutMs", num: &c.Hooks.TimeoutMs, usage: "a hook still running after this many ms is killed (100-600000)"},
	}
}

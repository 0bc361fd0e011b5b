// Package schema defines what ccm's binaries say to each other over NATS:
// subject, bucket and key names, and the JSON records and events they carry.
package schema

import "fmt"

// Daemon names; each is also the micro service name and the last but one
// token of the daemon's endpoint subjects.
const (
	ServiceElector  = "ccm-elector"
	ServiceWalship  = "ccm-walship"
	ServiceWalapply = "ccm-walapply"
	ServiceSnapshot = "ccm-snapshot"
	ServiceVIP      = "ccm-vip"
	ServiceBackend  = "ccm-backend"
	ServiceStorage  = "ccm-storage"
)

// KeyLeader is the KV key holding the LeaderRecord.
const KeyLeader = "leader"

// nodeKeyPrefix prefixes the KV keys holding each node's NodeStatus.
const nodeKeyPrefix = "nodes."

// Bucket is the KV bucket of a cluster (leader key and node status).
func Bucket(cluster string) string { return "ccm_" + cluster }

// SettingsBucket is the KV bucket of a cluster's operator settings that
// outlive every lease (Bucket's keys expire with the lease TTL): the
// maintenance mode.
func SettingsBucket(cluster string) string { return "ccm_" + cluster + "_settings" }

// KeyPause is the SettingsBucket key holding the PauseRecord.
const KeyPause = "pause"

// memberKeyPrefix prefixes the SettingsBucket keys of the cluster's
// members (MemberRecord): unlike the status keys they do not expire, so
// that a node that died is shown missing rather than forgotten.
const memberKeyPrefix = "members."

// MemberKey is the SettingsBucket key of a member.
func MemberKey(node string) string { return memberKeyPrefix + node }

// MemberKeys matches every member key.
const MemberKeys = memberKeyPrefix + "*"

// NodeKey is the KV key of a node's status.
func NodeKey(node string) string { return nodeKeyPrefix + node }

// ApplyKey is the KV key of a node's replication status.
func ApplyKey(node string) string { return nodeKeyPrefix + node + ".apply" }

// StorageKey is the KV key of a node's storage mirror status.
func StorageKey(node string) string { return nodeKeyPrefix + node + ".storage" }

// BackendKey is the KV key of a node's backend status.
func BackendKey(node string) string { return nodeKeyPrefix + node + ".backend" }

// KeySnapshotLock is held (created, renewed, deleted) by the node taking a
// snapshot, so that the cluster never takes two at once.
const KeySnapshotLock = "snapshot.lock"

// NodeKeys matches every node status key.
const NodeKeys = nodeKeyPrefix + "*"

// NodeFromKey returns the node ID of a status key, or "" if key is not one.
func NodeFromKey(key string) string {
	if len(key) <= len(nodeKeyPrefix) || key[:len(nodeKeyPrefix)] != nodeKeyPrefix {
		return ""
	}
	return key[len(nodeKeyPrefix):]
}

// RoleSubject carries the RoleEvents of one node; only that node's NATS
// identity may publish on it (see docs/security.md).
func RoleSubject(cluster, node string) string {
	return fmt.Sprintf("ccm.%s.events.role.%s", cluster, node)
}

// RoleSubjects matches the role events of every node of a cluster.
func RoleSubjects(cluster string) string { return RoleSubject(cluster, "*") }

// RoleSubjectNode returns the node of a RoleSubject, "" if subject is not one.
func RoleSubjectNode(cluster, subject string) string {
	prefix := RoleSubject(cluster, "")
	if len(subject) <= len(prefix) || subject[:len(prefix)] != prefix {
		return ""
	}
	return subject[len(prefix):]
}

// EndpointGroup is the subject prefix of a daemon's micro endpoints:
// ccm.<cluster>.<node>.<service> where service is the daemon name without "ccm-".
func EndpointGroup(cluster, node, daemon string) string {
	return fmt.Sprintf("ccm.%s.%s.%s", cluster, node, shortName(daemon))
}

// NodeEndpoints matches the endpoint subjects of every daemon of a node.
func NodeEndpoints(cluster, node string) string { return fmt.Sprintf("ccm.%s.%s.>", cluster, node) }

// Endpoint is the subject of one micro endpoint of a daemon.
func Endpoint(cluster, node, daemon, verb string) string {
	return EndpointGroup(cluster, node, daemon) + "." + verb
}

func shortName(daemon string) string {
	if len(daemon) > 4 && daemon[:4] == "ccm-" {
		return daemon[4:]
	}
	return daemon
}

// MaxChunk is the largest payload ccm publishes in one message (a WAL
// chunk, an Object Store chunk of a snapshot or a storage file): large
// enough to stream fast, below the NATS default max_payload of 1 MiB.
const MaxChunk = 512 << 10

// Endpoint verbs: the last token of an endpoint subject (Endpoint).
const (
	VerbStatus     = "status"     // every daemon: its status record
	VerbPromote    = "promote"    // ccm-elector: ask the leader to hand over to this node
	VerbDemote     = "demote"     // ccm-elector: step down (DemoteRequest)
	VerbLeave      = "leave"      // ccm-elector, ccm-walapply, ccm-storage: leave the cluster
	VerbFlush      = "flush"      // ccm-walship: FlushReply; ccm-storage: StorageDrained
	VerbDrain      = "drain"      // ccm-walapply: Position; ccm-storage (EpochRequest): StorageDrained
	VerbBarrier    = "barrier"    // ccm-storage: every file written so far is published
	VerbRelease    = "release"    // ccm-walapply: hand the drained shadow over
	VerbResume     = "resume"     // ccm-walapply: follow again after a release
	VerbPosition   = "position"   // ccm-walapply: the applied position
	VerbCheckpoint = "checkpoint" // ccm-walapply: a copy of the shadow at its position
	VerbPrepare    = "prepare"    // ccm-backend (EpochRequest): install the shadow
	VerbStart      = "start"      // ccm-backend (EpochRequest): start and health-check
	VerbStop       = "stop"       // ccm-backend (EpochRequest): stop the backend
	VerbNow        = "now"        // ccm-snapshot: take a snapshot now
	VerbVerify     = "verify"     // ccm-walship, ccm-walapply: the database read whole and checked (replica.Verification)
)

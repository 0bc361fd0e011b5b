package natsauth

import (
	"github.com/convex-cluster-manager/ccm/shared/epochlog"
	"github.com/convex-cluster-manager/ccm/shared/filestore"
	"github.com/convex-cluster-manager/ccm/shared/schema"
	"github.com/convex-cluster-manager/ccm/shared/snapstore"
	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

// Permissions are one NATS user's subject permissions: what it may
// publish and subscribe to; anything else the server refuses. Responses
// to requests the user received are always allowed.
type Permissions struct {
	Publish   []string
	Subscribe []string
}

// InboxPrefix is the inbox prefix of a user: replies and JetStream
// deliveries come to subjects under it, and no other user may subscribe
// there (the default _INBOX.> would let any user read every reply and
// every WAL message delivered to another).
func InboxPrefix(user string) string { return "_INBOX_" + user }

// jetStreamReads are the JetStream API subjects that read: stream and
// consumer info, message gets, and the ephemeral consumers (with their
// acknowledgements and flow control) through which KV watches, key
// listings and object downloads read, on the streams given. Deleting
// consumers there is allowed too: nats.go deletes its ordered consumers
// when done and waits for the answer (5 s per listing when refused).
// A reader could so delete a node's KV watch, which nats.go re-creates.
func jetStreamReads(streams ...string) []string {
	s := []string{
		"$JS.API.INFO",
		"$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST",
		"$JS.API.STREAM.INFO.*", "$JS.API.STREAM.MSG.GET.*", "$JS.API.DIRECT.GET.>",
		"$JS.API.CONSUMER.INFO.>", "$JS.API.CONSUMER.NAMES.*", "$JS.API.CONSUMER.LIST.*",
		"$JS.API.CONSUMER.MSG.NEXT.>",
		"$JS.ACK.>", "$JS.FC.>",
	}
	for _, st := range streams {
		s = append(s, "$JS.API.CONSUMER.CREATE."+st, "$JS.API.CONSUMER.CREATE."+st+".>", "$JS.API.CONSUMER.DELETE."+st+".*")
	}
	return s
}

// kvStream and objStream name the streams behind a KV bucket and an object
// store.
func kvStream(bucket string) string  { return "KV_" + bucket }
func objStream(bucket string) string { return "OBJ_" + bucket }

// kvKey is the subject of a key of a KV bucket.
func kvKey(bucket, key string) string { return "$KV." + bucket + "." + key }

// NodePermissions are those of node's daemons: the JetStream API (they
// create and run the cluster's streams, buckets and consumers), the WAL
// stream, their history records, the storage manifest and objects, the snapshots, the leader
// key, the snapshot lock and their own status keys; their own role
// events and endpoints; and of other nodes' endpoints only what the
// protocol calls (a handover's demote and the position of its target) and
// their status (ccm status run on a node as the node).
func NodePermissions(cluster, node string) Permissions {
	b := schema.Bucket(cluster)
	return Permissions{
		Publish: []string{
			"$JS.API.>", "$JS.ACK.>", "$JS.FC.>",
			walstream.Subject(cluster),
			epochlog.Subject(cluster, node),
			schema.RoleSubject(cluster, node),
			kvKey(b, schema.KeyLeader), kvKey(b, schema.KeySnapshotLock),
			kvKey(b, schema.NodeKey(node)), kvKey(b, schema.NodeKey(node)) + ".>",
			kvKey(schema.SettingsBucket(cluster), schema.MemberKey(node)),
			"$KV." + filestore.FilesBucket(cluster) + ".>",
			"$O." + filestore.BlobsBucket(cluster) + ".>",
			"$O." + snapstore.Bucket(cluster) + ".>",
			schema.NodeEndpoints(cluster, node),
			schema.Endpoint(cluster, "*", schema.ServiceElector, schema.VerbDemote),
			schema.Endpoint(cluster, "*", schema.ServiceWalapply, schema.VerbPosition),
			schema.Endpoint(cluster, "*", "*", schema.VerbStatus), // ccm status on a node, as the node
		},
		Subscribe: []string{
			InboxPrefix(node) + ".>",
			schema.NodeEndpoints(cluster, node),
			"$SRV.>",
			schema.RoleSubjects(cluster),
		},
	}
}

// OperatorPermissions are those of the operator's ccm CLI: read the
// cluster's state (status, history, join's downloads), call every daemon's
// status and the operator's verbs (promote, demote, leave, snapshot now,
// verify), remove a leaving node's status keys, and pause and resume the
// cluster. It cannot write the WAL stream, storage, snapshots or the
// leader key, nor publish role events.
func OperatorPermissions(cluster string) Permissions {
	b := schema.Bucket(cluster)
	pub := jetStreamReads(kvStream(b), kvStream(filestore.FilesBucket(cluster)),
		objStream(filestore.BlobsBucket(cluster)), objStream(snapstore.Bucket(cluster)), walstream.Stream(cluster),
		epochlog.Stream(cluster), kvStream(schema.SettingsBucket(cluster)))
	pub = append(pub,
		"$SRV.>",
		schema.Endpoint(cluster, "*", "*", schema.VerbStatus),
		schema.Endpoint(cluster, "*", schema.ServiceElector, schema.VerbPromote),
		schema.Endpoint(cluster, "*", schema.ServiceElector, schema.VerbDemote),
		schema.Endpoint(cluster, "*", schema.ServiceElector, schema.VerbLeave),
		schema.Endpoint(cluster, "*", schema.ServiceWalapply, schema.VerbLeave),
		schema.Endpoint(cluster, "*", schema.ServiceStorage, schema.VerbLeave),
		schema.Endpoint(cluster, "*", schema.ServiceSnapshot, schema.VerbNow),
		schema.Endpoint(cluster, "*", "*", schema.VerbVerify),
		kvKey(b, schema.ApplyKey("*")), kvKey(b, schema.StorageKey("*")),
		kvKey(schema.SettingsBucket(cluster), schema.KeyPause),
		kvKey(schema.SettingsBucket(cluster), schema.MemberKeys), // remove a dead node's membership
	)
	return Permissions{Publish: pub, Subscribe: []string{InboxPrefix(OperatorUser) + ".>", schema.RoleSubjects(cluster)}}
}

// MonitorPermissions are read-only: the cluster's KV state (ccm status),
// its leadership history (ccm history),
// every daemon's status endpoint, micro discovery (nats micro ls/info) and
// the role events.
func MonitorPermissions(cluster string) Permissions {
	pub := append(jetStreamReads(kvStream(schema.Bucket(cluster)), epochlog.Stream(cluster), kvStream(schema.SettingsBucket(cluster))),
		"$SRV.>",
		schema.Endpoint(cluster, "*", "*", schema.VerbStatus),
	)
	return Permissions{Publish: pub, Subscribe: []string{InboxPrefix(MonitorUser) + ".>", schema.RoleSubjects(cluster)}}
}

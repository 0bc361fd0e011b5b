package schema

import "time"

// Role is what a node currently is in its cluster.
type Role string

// Roles a node can have.
const (
	RoleStarting Role = "starting" // not yet synchronised with the leader key
	RolePassive  Role = "passive"
	RoleLeader   Role = "leader"
)

// LeaderRecord is the value of the leader key.
type LeaderRecord struct {
	Node string `json:"node"`
	// Epoch is the KV revision at which Node took the key. It is 0 in the
	// write that takes the key, whose own revision is then the epoch; see EpochAt.
	Epoch       uint64    `json:"epoch,omitempty"`
	Since       time.Time `json:"since"`
	RenewedAt   time.Time `json:"renewedAt"`
	LeaderTTLMs int64     `json:"leaderTtlMs"`
	// HandoverTo, when set, names the node that may take the key next by a
	// compare-and-set on this revision; Node has already stepped down.
	HandoverTo string `json:"handoverTo,omitempty"`
	// Ready says Node's promotion of Epoch finished (its backend served): an
	// elector restarted on Node resumes serving instead of promoting again.
	Ready bool `json:"ready,omitempty"`
}

// EpochAt returns the record's epoch given the KV revision it was read at.
func (r LeaderRecord) EpochAt(revision uint64) uint64 {
	if r.Epoch == 0 {
		return revision
	}
	return r.Epoch
}

// Serving reports whether Node is acting as leader (not handing over).
func (r LeaderRecord) Serving() bool { return r.Node != "" && r.HandoverTo == "" }

// NodeStatus is the value of a node's status key, rewritten every heartbeat.
type NodeStatus struct {
	Node      string    `json:"node"`
	Role      Role      `json:"role"`
	Epoch     uint64    `json:"epoch,omitempty"`
	Leader    string    `json:"leader,omitempty"`
	Version   string    `json:"version"`
	StartedAt time.Time `json:"startedAt"`
	UpdatedAt time.Time `json:"updatedAt"`
	// Paused says the node's elector follows the maintenance mode.
	Paused bool `json:"paused,omitempty"`
}

// MemberRecord says a node is a member of the cluster, until it leaves
// (ccm leave); its elector rewrites it now and then while it runs.
type MemberRecord struct {
	Node     string    `json:"node"`
	LastSeen time.Time `json:"lastSeen"`
	Version  string    `json:"version,omitempty"`
}

// PauseRecord is the maintenance mode (ccm pause / ccm resume): while
// Paused, no elector campaigns or hands over by itself; the leader keeps
// its lease and serves, and the operator's promote and demote still work.
type PauseRecord struct {
	Paused bool      `json:"paused"`
	At     time.Time `json:"at"`
	By     string    `json:"by,omitempty"` // where ccm pause ran (host name)
	Reason string    `json:"reason,omitempty"`
}

// RoleEvent is published on RoleSubject on every role change and renewal.
type RoleEvent struct {
	Cluster string `json:"cluster"`
	Node    string `json:"node"`
	Role    Role   `json:"role"`
	Epoch   uint64 `json:"epoch"`
	// Leader is the node the sender believes leads epoch Epoch ("" if none).
	Leader string `json:"leader,omitempty"`
	// Deadline is when a leader must have stopped serving unless it publishes
	// a newer event first: the dead-man switch for the node's other daemons.
	Deadline time.Time `json:"deadline,omitzero"`
	// DeadlineBoot is the same deadline on the node's CLOCK_BOOTTIME (ns
	// since boot). Role events are acted on only by the node that sent
	// them, whose daemons read the same clock: unlike Deadline it holds
	// whatever the wall clock does (rolewatch prefers it).
	DeadlineBoot int64 `json:"deadlineBootNs,omitempty"`
	// Prepared, on a leader, says the database is in place: WAL shipping
	// may start. Ready says the promotion finished and the backend serves:
	// the VIP may point at it.
	Prepared bool      `json:"prepared,omitempty"`
	Ready    bool      `json:"ready,omitempty"`
	Reason   string    `json:"reason,omitempty"`
	At       time.Time `json:"at"`
}

// ApplyStatus is the value of a passive's apply status key (ApplyKey),
// written by ccm-walapply about once a second.
type ApplyStatus struct {
	Node      string `json:"node"`
	Epoch     uint64 `json:"epoch"`
	TXID      uint64 `json:"txid"`
	Seq       uint64 `json:"seq"`
	StreamSeq uint64 `json:"streamSeq"`
	// LagMs is how much older the applied position is than the newest
	// change in the stream, by the leader's capture clock; 0 when caught up.
	LagMs int64 `json:"lagMs"`
	// LagTXIDs is how many TXIDs of the current epoch are not applied yet
	// (-1 when the stream's newest change is from another epoch).
	LagTXIDs int64 `json:"lagTxids"`
	// LagBytes is how many bytes of LTX the stream holds (or, for a file
	// still being appended, will hold) beyond the applied position; -1
	// when it cannot be told (a full copy of another chain is in flight).
	LagBytes int64 `json:"lagBytes"`
	// FullCopy is, while a full copy of the database is in flight, why the
	// leader ships one (from its epoch marker).
	FullCopy string `json:"fullCopy,omitempty"`
	// Complete is true once the shadow has held a whole database: an
	// incomplete one is never eligible.
	Complete  bool      `json:"complete"`
	State     string    `json:"state"` // ApplyFollowing, ApplyBehindRetention, ...
	Error     string    `json:"error,omitempty"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// States of a passive's replication (ApplyStatus.State).
const (
	ApplyFollowing       = "following"
	ApplyPaused          = "paused"           // drained for a promotion
	ApplyReleased        = "released"         // the shadow became the leader's database
	ApplyFailed          = "failed"           // a message was refused (Error says why)
	ApplyBehindRetention = "behind retention" // the next message aged out of the stream: re-bootstrapping
	ApplyOpening         = "opening"          // the shadow could not be opened or bootstrapped yet (Error says why): retrying
	ApplyLeft            = "left"
	ApplyIdle            = "idle"
)

// States of a node's storage replication (StorageStatus.State).
const (
	StorageCapturing = "capturing" // the leader publishes its tree
	StorageSyncing   = "syncing"   // a passive fetches the manifest's files
	StorageSynced    = "synced"    // a passive holds every file of the manifest
	StorageFailed    = "failed"    // files could not be captured or fetched (Error says which)
	StorageReleased  = "released"  // the mirror became the data path's tree at promotion
	StorageIdle      = "idle"
)

// StorageStatus is the value of a node's storage status key (StorageKey),
// written by ccm-storage about once a second.
type StorageStatus struct {
	Node  string `json:"node"`
	State string `json:"state"`
	Epoch uint64 `json:"epoch,omitempty"` // captured epoch, on the leader
	// Files and Bytes are what this node holds of the manifest (on a
	// passive) or publishes (on the leader); Failed counts files it could not.
	Files  int   `json:"files"`
	Bytes  int64 `json:"bytes"`
	Failed int   `json:"failed,omitempty"`
	// ManifestFiles and ManifestBytes are the leader's newest summary.
	ManifestFiles int   `json:"manifestFiles"`
	ManifestBytes int64 `json:"manifestBytes"`
	// Revision is the manifest revision a mirror has applied.
	Revision  uint64    `json:"revision,omitempty"`
	Error     string    `json:"error,omitempty"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// ShipStatus is ccm-walship's status (its status endpoint's "status").
type ShipStatus struct {
	Shipping bool   `json:"shipping"`
	Epoch    uint64 `json:"epoch,omitempty"`
	TXID     uint64 `json:"txid,omitempty"`
	Seq      uint64 `json:"seq,omitempty"`
	Files    int64  `json:"files,omitempty"`
	Bytes    int64  `json:"bytes,omitempty"`
	// UnshippedTXIDs were captured from the WAL but are not in the stream
	// yet; the oldest has waited UnshippedMs.
	UnshippedTXIDs uint64 `json:"unshippedTxids,omitempty"`
	UnshippedMs    int64  `json:"unshippedMs,omitempty"`
	// StorageBarrierDown: ccm-storage's barrier gave up and has not
	// answered since; files ship without waiting for storage.
	StorageBarrierDown bool `json:"storageBarrierDown,omitempty"`
	// RefusedEpoch is an epoch this node will not ship (fenced, or its
	// database behind the stream); Error says why.
	RefusedEpoch uint64 `json:"refusedEpoch,omitempty"`
	Error        string `json:"error,omitempty"`
}

// BackendStatus is ccm-backend's status, also the value of its node's
// BackendKey, written about once a second.
type BackendStatus struct {
	Node     string `json:"node"`
	Unit     string `json:"unit"`
	State    string `json:"state"`
	Healthy  bool   `json:"healthy"`
	Failures int    `json:"failures,omitempty"`
	// Frozen: the backend's processes are stopped (kept, not killed)
	// because the leader's changes wait longer than wal.maxUnshippedMs to
	// be shipped; FrozenReason says what was seen, FrozenMs for how long.
	Frozen       bool      `json:"frozen,omitempty"`
	FrozenReason string    `json:"frozenReason,omitempty"`
	FrozenMs     int64     `json:"frozenMs,omitempty"`
	Error        string    `json:"error,omitempty"`
	UpdatedAt    time.Time `json:"updatedAt"`
}

// DemoteRequest is the body of ccm-elector's demote request.
type DemoteRequest struct {
	// To names the node to hand over to; "" lets the cluster elect one.
	To string `json:"to,omitempty"`
	// Automatic marks a demotion no operator asked for (ccm-backend's,
	// after failed health checks): refused while the cluster is paused.
	Automatic bool `json:"automatic,omitempty"`
}

// RoleReply is the reply of ccm-elector's promote and demote requests.
type RoleReply struct {
	Node   string `json:"node"`
	Role   Role   `json:"role"`
	Epoch  uint64 `json:"epoch"`
	Leader string `json:"leader,omitempty"`
}

// EpochRequest is the body of the requests that act for one epoch:
// ccm-backend's prepare, start and stop, ccm-storage's drain.
type EpochRequest struct {
	Epoch uint64 `json:"epoch"`
}

// FlushReply is the reply of ccm-walship's flush: everything committed so
// far is in the stream, up to this TXID at this sequence.
type FlushReply struct {
	Epoch uint64 `json:"epoch"`
	TXID  uint64 `json:"txid"`
	Seq   uint64 `json:"seq"`
}

// StorageDrained is the reply of ccm-storage's drain (the mirrored tree
// installed for a promotion) and flush (the tree published).
type StorageDrained struct {
	Files    int    `json:"files"`
	Bytes    int64  `json:"bytes"`
	Revision uint64 `json:"revision"`
	SetAside string `json:"setAside,omitempty"`
}

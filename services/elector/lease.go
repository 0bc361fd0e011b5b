package elector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// ErrBucketMismatch means the cluster's KV bucket exists with a TTL that
// differs from this node's election.leaderTtlMs.
var ErrBucketMismatch = errors.New("KV bucket settings differ from this node's configuration")

// openBucket creates the cluster's KV bucket, or opens it and checks that
// its TTL matches ours: all nodes must agree on the lease length.
func openBucket(ctx context.Context, js jetstream.JetStream, cluster string, ttl time.Duration, replicas int) (jetstream.KeyValue, error) {
	name := schema.Bucket(cluster)
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:         name,
		Description:    "ccm leader lease and node status of cluster " + cluster,
		History:        1,
		TTL:            ttl,
		LimitMarkerTTL: max(ttl, time.Second),
		Storage:        jetstream.FileStorage,
		Replicas:       replicas,
	})
	if err == nil {
		return kv, nil
	}
	if !errors.Is(err, jetstream.ErrBucketExists) {
		return nil, fmt.Errorf("create KV bucket %s: %w", name, err)
	}
	kv, err = js.KeyValue(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("open KV bucket %s: %w", name, err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("KV bucket %s status: %w", name, err)
	}
	if st.TTL() != ttl {
		return nil, fmt.Errorf("%w: bucket %s has TTL %s but election.leaderTtlMs is %d: every node must use the same TTL",
			ErrBucketMismatch, name, st.TTL(), ttl.Milliseconds())
	}
	return kv, nil
}

// decodeLeader parses the leader key's value.
func decodeLeader(e jetstream.KeyValueEntry) (schema.LeaderRecord, error) {
	var r schema.LeaderRecord
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return r, fmt.Errorf("leader key revision %d: invalid record %q: %w", e.Revision(), e.Value(), err)
	}
	if r.Node == "" {
		return r, fmt.Errorf("leader key revision %d: record names no node", e.Revision())
	}
	return r, nil
}

func encode(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("encode %T: %v", v, err)) // only plain structs are encoded
	}
	return b
}

// isConflict reports whether err is a failed compare-and-set on the key.
func isConflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) ||
		errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted)
}

package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/convex-cluster-manager/ccm/shared/config"
	"github.com/convex-cluster-manager/ccm/shared/natsconn"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// errNotRunning means a daemon did not answer: it is not running.
var errNotRunning = errors.New("not running")

// client is a connection to one cluster.
type client struct {
	cfg config.Config
	nc  *nats.Conn
	kv  jetstream.KeyValue
	ttl time.Duration
}

// dial connects to NATS and opens the cluster's bucket.
func dial(ctx context.Context, cfg config.Config) (*client, error) {
	nc, err := natsconn.Client(ctx, cfg.NATS.ForCLI(), "ccm-cli@"+cfg.NodeID, 3*time.Second)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	kv, err := js.KeyValue(ctx, schema.Bucket(cfg.ClusterID))
	if err != nil {
		nc.Close()
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil, fmt.Errorf("%w: cluster %q has no bucket %s on %s: is ccm-elector running with this clusterId?",
				ErrNoCluster, cfg.ClusterID, schema.Bucket(cfg.ClusterID), strings.Join(cfg.NATS.Servers, ","))
		}
		return nil, fmt.Errorf("%w: open bucket %s: %w", ErrNoCluster, schema.Bucket(cfg.ClusterID), err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("bucket %s status: %w", schema.Bucket(cfg.ClusterID), err)
	}
	return &client{cfg: cfg, nc: nc, kv: kv, ttl: st.TTL()}, nil
}

func (c *client) Close() { c.nc.Close() }

// leaderEntry is the leader key as read, with its epoch resolved.
type leaderEntry struct {
	schema.LeaderRecord
	Epoch    uint64
	Revision uint64
	Written  time.Time
}

// leader reads the leader key; nil when vacant.
func (c *client) leader(ctx context.Context) (*leaderEntry, error) {
	ent, err := c.kv.Get(ctx, schema.KeyLeader)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read leader key: %w", err)
	}
	return toLeader(ent)
}

func toLeader(ent jetstream.KeyValueEntry) (*leaderEntry, error) {
	var r schema.LeaderRecord
	if err := json.Unmarshal(ent.Value(), &r); err != nil {
		return nil, fmt.Errorf("leader key revision %d: invalid record: %w", ent.Revision(), err)
	}
	return &leaderEntry{LeaderRecord: r, Epoch: r.EpochAt(ent.Revision()), Revision: ent.Revision(), Written: ent.Created()}, nil
}

// nodeEntry is a node's status as read.
type nodeEntry struct {
	schema.NodeStatus
	Written time.Time
}

// nodes reads every live node status, sorted by node ID.
func (c *client) nodes(ctx context.Context) ([]nodeEntry, error) {
	lister, err := c.kv.ListKeysFiltered(ctx, schema.NodeKeys)
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	var out []nodeEntry
	for key := range lister.Keys() {
		ent, err := c.kv.Get(ctx, key)
		if err != nil {
			continue // expired between list and get
		}
		var st schema.NodeStatus
		if err := json.Unmarshal(ent.Value(), &st); err != nil {
			st = schema.NodeStatus{Node: schema.NodeFromKey(key), Role: "invalid"}
		}
		out = append(out, nodeEntry{NodeStatus: st, Written: ent.Created()})
	}
	slices.SortFunc(out, func(a, b nodeEntry) int { return strings.Compare(a.Node, b.Node) })
	return out, nil
}

// requireNode fails with ErrUnknownNode unless id has a live status.
func (c *client) requireNode(ctx context.Context, id string) error {
	if !config.ValidID(id) {
		return fmt.Errorf("%w: node ID %q is invalid: %s", ErrUsage, id, config.IDRule)
	}
	nodes, err := c.nodes(ctx)
	if err != nil {
		return err
	}
	var ids []string
	for _, n := range nodes {
		if n.Node == id {
			return nil
		}
		ids = append(ids, n.Node)
	}
	return fmt.Errorf("%w %q in cluster %s (live nodes: %s)", ErrUnknownNode, id, c.cfg.ClusterID, strings.Join(ids, ", "))
}

// request calls a daemon endpoint and decodes its JSON reply into out.
func (c *client) request(ctx context.Context, node, daemon, verb string, body, out any) error {
	data, err := natsconn.Call(ctx, c.nc, c.cfg.ClusterID, node, daemon, verb, body, time.Hour)
	var refused *natsconn.CallError
	switch {
	case errors.Is(err, natsconn.ErrNotRunning):
		return fmt.Errorf("%w: %s on node %s (no responders on %s)", errNotRunning, daemon, node, schema.Endpoint(c.cfg.ClusterID, node, daemon, verb))
	case errors.As(err, &refused):
		err := fmt.Errorf("%s %s on node %s: %s", daemon, verb, node, refused.Description)
		if refused.Code == natsconn.CodeNotFound {
			err = fmt.Errorf("%w: %w", ErrUnknownNode, err)
		}
		return err
	case err != nil:
		return fmt.Errorf("%s %s on node %s: %w", daemon, verb, node, errors.Unwrap(err))
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s on node %s: invalid reply %q: %w", daemon, verb, node, data, err)
		}
	}
	return nil
}

// waitLeader watches the leader key until done accepts the serving leader.
func (c *client) waitLeader(ctx context.Context, done func(*leaderEntry) bool) (*leaderEntry, error) {
	w, err := c.kv.Watch(ctx, schema.KeyLeader)
	if err != nil {
		return nil, fmt.Errorf("watch leader key: %w", err)
	}
	defer w.Stop()
	for {
		select {
		case ent := <-w.Updates():
			if ent == nil || ent.Operation() != jetstream.KeyValuePut {
				continue
			}
			l, err := toLeader(ent)
			if err == nil && l.Serving() && done(l) {
				return l, nil
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("%w waiting for the new leader: %w", ErrTimeout, ctx.Err())
		}
	}
}

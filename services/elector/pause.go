package elector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/convex-cluster-manager/ccm/shared/epochlog"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// ErrPaused refuses an automatic step while the cluster is paused.
var ErrPaused = errors.New("the cluster is paused (maintenance mode): no automatic handover")

// openSettings creates or opens the cluster's settings bucket: no TTL,
// so that the maintenance mode outlives every lease.
func openSettings(ctx context.Context, js jetstream.JetStream, cluster string, replicas int) (jetstream.KeyValue, error) {
	name := schema.SettingsBucket(cluster)
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      name,
		Description: "ccm operator settings of cluster " + cluster + " (maintenance mode)",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	})
	if errors.Is(err, jetstream.ErrBucketExists) {
		kv, err = js.KeyValue(ctx, name)
	}
	if err != nil {
		return nil, fmt.Errorf("KV bucket %s: %w", name, err)
	}
	return kv, nil
}

// refreshPause reads the maintenance mode; on a read error the last
// value read stands.
func (e *Elector) refreshPause(ctx context.Context) {
	if e.settings == nil {
		return
	}
	octx, cancel := context.WithTimeout(ctx, e.heartbeat/2)
	defer cancel()
	var p schema.PauseRecord
	ent, err := e.settings.Get(octx, schema.KeyPause)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted):
	case err != nil:
		e.log.Debug("read the maintenance mode", "err", err)
		return
	default:
		if err := json.Unmarshal(ent.Value(), &p); err != nil {
			e.log.Error("ignoring an invalid maintenance mode record", "err", err)
			return
		}
	}
	e.mu.Lock()
	was := e.pause
	e.pause = p
	e.mu.Unlock()
	if p.Paused == was.Paused {
		return
	}
	e.dirty = true
	kind := epochlog.Resumed
	if p.Paused {
		kind = epochlog.Paused
		e.log.Warn("cluster paused (maintenance mode): no campaigns or automatic handovers until ccm resume", "since", p.At, "by", p.By, "reason", p.Reason)
	} else {
		e.log.Info("cluster resumed: automatic failover again")
	}
	// The leader writes it into its term (the first read at a start is
	// not news, unless the node leads).
	if s := e.State(); s.Role == schema.RoleLeader && p.At.After(e.started) {
		reason := p.Reason
		if p.By != "" {
			reason = strings.TrimSpace("by " + p.By + " " + reason)
		}
		e.history.Add(s.Epoch, kind, reason)
	}
}

// paused reports whether the cluster is in maintenance mode.
func (e *Elector) paused() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.pause.Paused
}

// pausedFor is how long the cluster has been paused (0: not paused).
func (e *Elector) pausedFor() time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.pause.Paused {
		return 0
	}
	return time.Since(e.pause.At)
}

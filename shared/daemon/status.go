package daemon

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/convex-cluster-manager/ccm/shared/natsconn"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// statusHandler replies with d.Status() as JSON, plus its health.
func statusHandler(d Daemon) micro.HandlerFunc {
	return natsconn.Handle(0, nil, func(context.Context, micro.Request) (any, error) {
		reply := struct {
			Healthy bool   `json:"healthy"`
			Error   string `json:"error,omitempty"`
			Status  any    `json:"status"`
		}{Healthy: true, Status: d.Status()}
		if err := d.Healthy(); err != nil {
			reply.Healthy, reply.Error = false, err.Error()
		}
		return reply, nil
	})
}

// PublishStatus writes value() under key in the cluster's KV bucket (made
// by ccm-elector) every second until ctx ends; a false ok skips a round.
// ccm status reads these keys.
func PublishStatus(ctx context.Context, js jetstream.JetStream, cluster, key string, log *slog.Logger, value func() (v any, ok bool)) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var kv jetstream.KeyValue
	for {
		v, ok := value()
		if kv == nil {
			kv, _ = js.KeyValue(ctx, schema.Bucket(cluster))
		}
		if kv != nil && ok {
			b, _ := json.Marshal(v)
			pctx, cancel := context.WithTimeout(ctx, time.Second)
			if _, err := kv.Put(pctx, key, b); err != nil {
				log.Debug("publish status", "key", key, "err", err)
			}
			cancel()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

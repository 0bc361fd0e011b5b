package replica

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

// Follow delivers the cluster's WAL stream from sequence from onwards to fn,
// in order, until ctx ends or fn fails. It uses an ordered consumer, which
// recreates itself after disconnects and never skips a message.
func Follow(ctx context.Context, js jetstream.JetStream, cluster string, from uint64, fn func(jetstream.Msg) error) error {
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy}
	if from > 1 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, from
	}
	c, err := js.OrderedConsumer(ctx, walstream.Stream(cluster), cfg)
	if err != nil {
		return fmt.Errorf("consume WAL stream: %w", err)
	}
	// Bounded prefetch: a large file arrives as many 512 KiB chunks, and
	// memory must not grow with it while an apply keeps the reader busy.
	it, err := c.Messages(jetstream.PullMaxBytes(8 << 20))
	if err != nil {
		return fmt.Errorf("consume WAL stream: %w", err)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	defer it.Stop()
	for {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("next WAL message: %w", err)
		}
		if err := fn(m); err != nil {
			return err
		}
	}
}

// Package walstream defines the WAL stream shared by ccm-walship (the only
// writer, on the leader) and ccm-walapply (readers, on passives): its name,
// its messages and the fenced append that keeps a deposed leader out.
package walstream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// Stream is the JetStream stream name of a cluster's WAL.
func Stream(cluster string) string { return "CCM_WAL_" + cluster }

// Subject is the single subject all WAL messages are published on, so that
// the stream's last sequence orders every append.
func Subject(cluster string) string { return fmt.Sprintf("ccm.%s.wal", cluster) }

// ChunkSize is the largest payload of one message; LTX files are split
// into chunks of this size.
const ChunkSize = schema.MaxChunk

// Ensure creates the cluster's WAL stream with retention keep and the
// given replica count, or updates it when its settings differ. Only
// ccm-walship calls it: concurrent creates of one replicated stream (all
// the daemons of a starting node at once) can leave a request without an
// answer until it times out; readers use Lookup.
func Ensure(ctx context.Context, js jetstream.JetStream, cluster string, keep time.Duration, replicas int) (jetstream.Stream, error) {
	cfg := jetstream.StreamConfig{
		Name:        Stream(cluster),
		Description: "ccm WAL (LTX files) of cluster " + cluster,
		Subjects:    []string{Subject(cluster)},
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      keep,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
		Discard:     jetstream.DiscardOld,
		MaxMsgSize:  ChunkSize + 4096,
		Duplicates:  time.Minute,
	}
	s, err := js.Stream(ctx, cfg.Name)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		s, err = js.CreateStream(ctx, cfg)
	case err == nil && !sameConfig(s.CachedInfo().Config, cfg):
		s, err = js.UpdateStream(ctx, cfg)
	}
	if err != nil {
		return nil, fmt.Errorf("create WAL stream %s: %w", cfg.Name, err)
	}
	return s, nil
}

// sameConfig reports whether the stream has the settings Ensure sets.
func sameConfig(have, want jetstream.StreamConfig) bool {
	return have.MaxAge == want.MaxAge && have.Replicas == want.Replicas && have.MaxMsgSize == want.MaxMsgSize &&
		have.Duplicates == want.Duplicates && have.Discard == want.Discard && have.Description == want.Description &&
		len(have.Subjects) == 1 && have.Subjects[0] == want.Subjects[0]
}

// Lookup returns the cluster's WAL stream, which ccm-walship creates.
func Lookup(ctx context.Context, js jetstream.JetStream, cluster string) (jetstream.Stream, error) {
	s, err := js.Stream(ctx, Stream(cluster))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("WAL stream %s does not exist yet (ccm-walship creates it)", Stream(cluster))
	}
	if err != nil {
		return nil, fmt.Errorf("WAL stream %s: %w", Stream(cluster), err)
	}
	return s, nil
}

// ErrFenced means an append was refused because the stream moved on: a
// newer epoch was opened or someone else appended. The writer must stop.
var ErrFenced = errors.New("fenced: the WAL stream moved on")

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
)

// Stream is the JetStream stream name of a cluster's WAL.
func Stream(cluster string) string { return "CCM_WAL_" + cluster }

// Subject is the single subject all WAL messages are published on, so that
// the stream's last sequence orders every append.
func Subject(cluster string) string { return fmt.Sprintf("ccm.%s.wal", cluster) }

// ChunkSize is the largest payload of one message; LTX files are split
// into chunks of this size (the NATS default max_payload is 1 MiB).
const ChunkSize = 512 << 10

// Ensure creates or updates the cluster's WAL stream with retention keep
// and the given replica count.
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
	s, err := js.CreateOrUpdateStream(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("create WAL stream %s: %w", cfg.Name, err)
	}
	return s, nil
}

// ErrFenced means an append was refused because the stream moved on: a
// newer epoch was opened or someone else appended. The writer must stop.
var ErrFenced = errors.New("fenced: the WAL stream moved on")

// isWrongLastSequence reports whether err is JetStream's optimistic
// concurrency failure.
func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
	}
	return false
}

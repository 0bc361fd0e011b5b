// Package epochlog is the cluster's leadership history (ccm history): each
// node's elector records when it began leading an epoch, when its backend
// served, and when and why the epoch ended, in a small JetStream stream
// that outlives restarts.
package epochlog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Stream is the name of the cluster's history stream.
func Stream(cluster string) string { return "CCM_HISTORY_" + cluster }

// Subject is where node records its events (one subject per node, so that
// a node may write only its own).
func Subject(cluster, node string) string { return fmt.Sprintf("ccm.%s.history.%s", cluster, node) }

// Keep is how many events the stream keeps (the oldest go first): years
// of leader changes at a few a day.
const Keep = 10000

// Kinds of events.
const (
	Began   = "began"   // the node took the leader key for the epoch
	Serving = "serving" // its promotion finished: the backend serves
	Ended   = "ended"   // it no longer leads the epoch
	Paused  = "paused"  // the cluster was paused (maintenance mode) during the epoch
	Resumed = "resumed" // and resumed
)

// Event is one record of the history.
type Event struct {
	Epoch  uint64    `json:"epoch"`
	Node   string    `json:"node"`
	Kind   string    `json:"kind"`
	At     time.Time `json:"at"`
	Reason string    `json:"reason,omitempty"`
}

// Ensure creates the history stream, or updates its settings.
func Ensure(ctx context.Context, js jetstream.JetStream, cluster string, replicas int) (jetstream.Stream, error) {
	s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        Stream(cluster),
		Description: "ccm leadership history of cluster " + cluster,
		Subjects:    []string{Subject(cluster, "*")},
		Retention:   jetstream.LimitsPolicy,
		MaxMsgs:     Keep,
		Discard:     jetstream.DiscardOld,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
		MaxMsgSize:  4096,
	})
	if err != nil {
		return nil, fmt.Errorf("history stream %s: %w", Stream(cluster), err)
	}
	return s, nil
}

// Read returns every event in the stream, oldest first; none when the
// stream does not exist yet.
func Read(ctx context.Context, js jetstream.JetStream, cluster string) ([]Event, error) {
	s, err := js.Stream(ctx, Stream(cluster))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("history stream %s: %w", Stream(cluster), err)
	}
	last := s.CachedInfo().State.LastSeq
	if s.CachedInfo().State.Msgs == 0 {
		return nil, nil
	}
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, fmt.Errorf("read history stream %s: %w", Stream(cluster), err)
	}
	var out []Event
	for {
		msgs, err := c.Fetch(500, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return nil, fmt.Errorf("read history stream %s: %w", Stream(cluster), err)
		}
		n := 0
		for m := range msgs.Messages() {
			n++
			var ev Event
			if err := json.Unmarshal(m.Data(), &ev); err != nil {
				continue // not ours to interpret; the rest still reads
			}
			out = append(out, ev)
			md, err := m.Metadata()
			if err == nil && md.Sequence.Stream >= last {
				return out, nil
			}
		}
		if err := msgs.Error(); err != nil {
			return nil, fmt.Errorf("read history stream %s: %w", Stream(cluster), err)
		}
		if n == 0 {
			return out, nil
		}
	}
}

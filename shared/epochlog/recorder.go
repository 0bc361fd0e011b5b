package epochlog

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// maxQueued bounds the events a recorder holds while NATS is away.
const maxQueued = 1000

// Recorder publishes one node's events in order, retrying while NATS is
// away; Add never blocks (the election must not wait for its history).
type Recorder struct {
	js       jetstream.JetStream
	cluster  string
	node     string
	replicas int
	log      *slog.Logger

	mu    sync.Mutex
	queue []Event
	wake  chan struct{}
}

// NewRecorder returns a recorder of node's events; Run publishes them.
func NewRecorder(js jetstream.JetStream, cluster, node string, replicas int, log *slog.Logger) *Recorder {
	return &Recorder{js: js, cluster: cluster, node: node, replicas: replicas, log: log, wake: make(chan struct{}, 1)}
}

// Add queues an event of this node (the oldest queued is dropped when the
// queue is full).
func (r *Recorder) Add(epoch uint64, kind, reason string) {
	r.mu.Lock()
	if len(r.queue) >= maxQueued {
		r.log.Warn("history: NATS away too long, dropping the oldest unrecorded event", "event", r.queue[0])
		r.queue = r.queue[1:]
	}
	r.queue = append(r.queue, Event{Epoch: epoch, Node: r.node, Kind: kind, At: time.Now(), Reason: reason})
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Run publishes queued events until ctx ends.
func (r *Recorder) Run(ctx context.Context) {
	ensured := false
	for {
		r.mu.Lock()
		next, ok := Event{}, len(r.queue) > 0
		if ok {
			next = r.queue[0]
		}
		r.mu.Unlock()
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-r.wake:
				continue
			}
		}
		err := func() error {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			if !ensured {
				if _, err := Ensure(pctx, r.js, r.cluster, r.replicas); err != nil {
					return err
				}
				ensured = true
			}
			b, _ := json.Marshal(next)
			// The ID makes a retry of a publish that landed unseen a no-op.
			id := fmt.Sprintf("%s-%d-%s-%d", next.Node, next.Epoch, next.Kind, next.At.UnixNano())
			_, err := r.js.Publish(pctx, Subject(r.cluster, r.node), b, jetstream.WithMsgID(id))
			return err
		}()
		if err != nil {
			r.log.Debug("history: event not recorded yet; retrying", "event", next, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		r.mu.Lock()
		if len(r.queue) > 0 && r.queue[0] == next {
			r.queue = r.queue[1:]
		}
		r.mu.Unlock()
	}
}

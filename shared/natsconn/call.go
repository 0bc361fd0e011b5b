package natsconn

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// ErrNotRunning means no daemon answers on the endpoint: it does not run
// on that node (or not yet).
var ErrNotRunning = errors.New("daemon not running")

// Error codes of endpoint replies (the micro error header), the one list
// both sides use.
const (
	CodeBadRequest = "400" // the request cannot be read
	CodeNotFound   = "404" // it names something that does not exist
	CodeRefused    = "409" // not now: the daemon's state refuses it (not the leader, fenced, busy)
	CodeFailed     = "500" // it was tried and failed
	CodeNotReady   = "503" // this node cannot do it now (not ready, not eligible)
	CodeTimeout    = "504" // it did not finish in time
)

// CallError is an endpoint's error reply: its code ("409", "500", …) and
// description.
type CallError struct {
	Code        string
	Description string
}

func (e *CallError) Error() string { return e.Code + " " + e.Description }

// HasCode reports whether err is an endpoint's error reply with code.
func HasCode(err error, code string) bool {
	var ce *CallError
	return errors.As(err, &ce) && ce.Code == code
}

// Call requests verb of a node's daemon with body (JSON, if not nil) and
// returns the reply's payload. A micro error reply becomes an error with
// its code and description; no responders becomes ErrNotRunning.
func Call(ctx context.Context, nc *nats.Conn, cluster, node, daemon, verb string, body any, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var data []byte
	if body != nil {
		var err error
		if data, err = json.Marshal(body); err != nil {
			return nil, fmt.Errorf("%s %s: %w", daemon, verb, err)
		}
	}
	msg, err := nc.RequestWithContext(ctx, schema.Endpoint(cluster, node, daemon, verb), data)
	if errors.Is(err, nats.ErrNoResponders) {
		return nil, fmt.Errorf("%s: %w", daemon, ErrNotRunning)
	}
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", daemon, verb, err)
	}
	if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
		return nil, fmt.Errorf("%s %s: %w", daemon, verb, &CallError{Code: code, Description: msg.Header.Get(micro.ErrorHeader)})
	}
	return msg.Data, nil
}

// ErrAway means a daemon that does not answer published its status within
// the bucket's TTL: it runs on the node but is cut off or restarting, and
// a step that skips absent daemons must not skip it.
var ErrAway = errors.New("daemon does not answer, but published its status within a TTL")

// CheckAway turns err, from a Call of a daemon that publishes its status
// under key in the cluster's bucket, into ErrAway when it is ErrNotRunning
// while the key still exists (or cannot be read). Other errors pass.
func CheckAway(ctx context.Context, js jetstream.JetStream, cluster, key string, err error) error {
	if !errors.Is(err, ErrNotRunning) {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	kv, kerr := js.KeyValue(ctx, schema.Bucket(cluster))
	if kerr == nil {
		_, kerr = kv.Get(ctx, key)
	}
	if errors.Is(kerr, jetstream.ErrKeyNotFound) || errors.Is(kerr, jetstream.ErrKeyDeleted) {
		return err
	}
	return fmt.Errorf("%w (%s): %v", ErrAway, key, err)
}

// CallJSON is Call with the reply decoded into a T.
func CallJSON[T any](ctx context.Context, nc *nats.Conn, cluster, node, daemon, verb string, body any, timeout time.Duration) (T, error) {
	var out T
	b, err := Call(ctx, nc, cluster, node, daemon, verb, body, timeout)
	if err != nil {
		return out, err
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return out, fmt.Errorf("%s %s: invalid reply %q: %w", daemon, verb, b, err)
	}
	return out, nil
}

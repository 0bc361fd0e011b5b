package rolewatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// ErrUnconfirmed means a role event names an epoch the leader key does not
// bear out: it is forged, or outdated by a newer epoch.
var ErrUnconfirmed = errors.New("role event not confirmed by the leader key")

// Confirm checks ev against the leader key: a leader's event only if the
// key names ev.Node at ev.Epoch, any other only if the key's epoch has
// reached ev.Epoch. Role events are plain messages, while only an elector
// that won the key's compare-and-set holds an epoch: an event acted on
// without this check lets whoever can publish depose a leader, or make a
// passive serve.
func Confirm(ctx context.Context, kv jetstream.KeyValue, ev schema.RoleEvent) error {
	var err error
	for range confirmReads {
		var behind bool
		if behind, err = confirm(ctx, kv, ev); !behind {
			return err
		}
		// The key read may come from a replica that has not seen the
		// write the event follows (a direct get): read again, briefly.
		select {
		case <-ctx.Done():
			return err
		case <-time.After(confirmRetry):
		}
	}
	return err
}

// A key that shows an older epoch than an event is read again
// confirmReads times, confirmRetry apart.
const (
	confirmReads = 5
	confirmRetry = 20 * time.Millisecond
)

// confirm is one check of Confirm; behind says the key showed an older
// epoch than ev's.
func confirm(ctx context.Context, kv jetstream.KeyValue, ev schema.RoleEvent) (behind bool, err error) {
	rec, epoch, err := readLeader(ctx, kv)
	if err != nil {
		return false, err
	}
	if rec.Node == "" {
		return false, fmt.Errorf("%w: %s claims epoch %d, the key is empty", ErrUnconfirmed, ev.Node, ev.Epoch)
	}
	switch {
	case epoch < ev.Epoch:
		return true, fmt.Errorf("%w: %s names epoch %d, the key is at epoch %d (%s)", ErrUnconfirmed, ev.Node, ev.Epoch, epoch, rec.Node)
	case ev.Role == schema.RoleLeader && (rec.Node != ev.Node || epoch != ev.Epoch):
		return false, fmt.Errorf("%w: %s claims to lead epoch %d, the key names %s at epoch %d", ErrUnconfirmed, ev.Node, ev.Epoch, rec.Node, epoch)
	}
	return false, nil
}

// readLeader reads the leader key: its record and epoch, a zero record if
// the key is empty.
func readLeader(ctx context.Context, kv jetstream.KeyValue) (schema.LeaderRecord, uint64, error) {
	var rec schema.LeaderRecord
	ent, err := kv.Get(ctx, schema.KeyLeader)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return rec, 0, nil
	}
	if err != nil {
		return rec, 0, fmt.Errorf("read the leader key: %w", err)
	}
	if err := json.Unmarshal(ent.Value(), &rec); err != nil {
		return rec, 0, fmt.Errorf("leader record: %w", err)
	}
	return rec, rec.EpochAt(ent.Revision()), nil
}

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

// Confirm checks ev against cluster's leader key: a leader's event only if
// the key names ev.Node at ev.Epoch, any other only if the key's epoch has
// reached ev.Epoch. Role events are plain messages, while only an elector
// that won the key's compare-and-set holds an epoch: an event acted on
// without this check lets whoever can publish depose a leader, or make a
// passive serve.
func Confirm(ctx context.Context, js jetstream.JetStream, cluster string, ev schema.RoleEvent) error {
	var err error
	for range confirmReads {
		var final bool
		if final, err = confirm(ctx, js, cluster, ev); final {
			return err
		}
		// The key showed an older epoch, or could not be read (its
		// stream changing leaders in the failover that made this
		// epoch): read again, briefly.
		select {
		case <-ctx.Done():
			return err
		case <-time.After(confirmRetry):
		}
	}
	return err
}

// A key that shows an older epoch than an event, or cannot be read, is
// read again confirmReads times, confirmRetry apart (within the context).
const (
	confirmReads = 5
	confirmRetry = 20 * time.Millisecond
)

// confirm is one check of Confirm; final says its answer stands (the key
// was read and is not behind ev).
func confirm(ctx context.Context, js jetstream.JetStream, cluster string, ev schema.RoleEvent) (final bool, err error) {
	rec, epoch, err := readLeader(ctx, js, cluster)
	if err != nil {
		return false, err
	}
	switch {
	case rec.Node == "":
		return true, fmt.Errorf("%w: %s claims epoch %d, the key is empty", ErrUnconfirmed, ev.Node, ev.Epoch)
	case epoch < ev.Epoch:
		return false, fmt.Errorf("%w: %s names epoch %d, the key is at epoch %d (%s)", ErrUnconfirmed, ev.Node, ev.Epoch, epoch, rec.Node)
	case ev.Role == schema.RoleLeader && (rec.Node != ev.Node || epoch != ev.Epoch):
		return true, fmt.Errorf("%w: %s claims to lead epoch %d, the key names %s at epoch %d", ErrUnconfirmed, ev.Node, ev.Epoch, rec.Node, epoch)
	}
	return true, nil
}

// readLeader reads cluster's leader key from its stream's leader (not a
// direct get, which a replica behind the elector's write may answer): its
// record and epoch, a zero record if the key is empty or the bucket does
// not exist.
func readLeader(ctx context.Context, js jetstream.JetStream, cluster string) (schema.LeaderRecord, uint64, error) {
	var rec schema.LeaderRecord
	bucket := schema.Bucket(cluster)
	s, err := js.Stream(ctx, "KV_"+bucket)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return rec, 0, nil
	}
	if err != nil {
		return rec, 0, fmt.Errorf("read the leader key: %w", err)
	}
	m, err := s.GetLastMsgForSubject(ctx, "$KV."+bucket+"."+schema.KeyLeader)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return rec, 0, nil
	}
	if err != nil {
		return rec, 0, fmt.Errorf("read the leader key: %w", err)
	}
	if op := m.Header.Get("KV-Operation"); op == "DEL" || op == "PURGE" {
		return rec, 0, nil
	}
	if err := json.Unmarshal(m.Data, &rec); err != nil {
		return rec, 0, fmt.Errorf("leader record: %w", err)
	}
	return rec, rec.EpochAt(m.Sequence), nil
}

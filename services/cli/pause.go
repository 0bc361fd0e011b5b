package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/convex-cluster-manager/ccm/shared/config"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

func newPause(stdout, stderr io.Writer) *ffcli.Command {
	fs := newFlagSet("ccm pause", stderr)
	reason := fs.String("reason", "", "why (shown by ccm status)")
	flags := config.Bind(fs)
	return &ffcli.Command{
		Name:       "pause",
		ShortUsage: "ccm pause [--reason TEXT]",
		ShortHelp:  "maintenance mode: no automatic failover or campaigning until ccm resume",
		LongHelp: "The leader keeps its lease and serves; promote and demote still work. A paused cluster\n" +
			"whose leader dies stays leaderless until ccm resume (or ccm promote).",
		FlagSet: fs,
		Options: config.ParseOptions(),
		Exec: func(ctx context.Context, args []string) error {
			return withClient(ctx, args, flags, func(c *client) error {
				host, _ := os.Hostname()
				return c.setPause(ctx, stdout, schema.PauseRecord{Paused: true, At: time.Now(), By: host, Reason: *reason})
			})
		},
	}
}

func newResume(stdout, stderr io.Writer) *ffcli.Command {
	fs := newFlagSet("ccm resume", stderr)
	flags := config.Bind(fs)
	return &ffcli.Command{
		Name:       "resume",
		ShortUsage: "ccm resume",
		ShortHelp:  "end the maintenance mode: automatic failover again",
		FlagSet:    fs,
		Options:    config.ParseOptions(),
		Exec: func(ctx context.Context, args []string) error {
			return withClient(ctx, args, flags, func(c *client) error {
				host, _ := os.Hostname()
				return c.setPause(ctx, stdout, schema.PauseRecord{Paused: false, At: time.Now(), By: host})
			})
		},
	}
}

// pause reads the maintenance mode (zero: never paused, or the bucket
// does not exist yet).
func (c *client) pause(ctx context.Context) (schema.PauseRecord, error) {
	var p schema.PauseRecord
	kv, err := c.settings(ctx)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return p, nil
	}
	if err != nil {
		return p, err
	}
	ent, err := kv.Get(ctx, schema.KeyPause)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return p, nil
	}
	if err != nil {
		return p, fmt.Errorf("read the maintenance mode: %w", err)
	}
	if err := json.Unmarshal(ent.Value(), &p); err != nil {
		return p, fmt.Errorf("maintenance mode record: %w", err)
	}
	return p, nil
}

func (c *client) settings(ctx context.Context) (jetstream.KeyValue, error) {
	js, err := jetstream.New(c.nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	return js.KeyValue(ctx, schema.SettingsBucket(c.cfg.ClusterID))
}

// setPause writes the maintenance mode and waits until every live node's
// elector follows it.
func (c *client) setPause(ctx context.Context, w io.Writer, p schema.PauseRecord) error {
	kv, err := c.settings(ctx)
	if err != nil {
		return fmt.Errorf("%w: settings bucket %s: %w (is ccm-elector of this version running?)", ErrNoCluster, schema.SettingsBucket(c.cfg.ClusterID), err)
	}
	if _, err := kv.Put(ctx, schema.KeyPause, encodeJSON(p)); err != nil {
		return fmt.Errorf("write the maintenance mode: %w", err)
	}
	verb := map[bool]string{true: "paused", false: "resumed"}[p.Paused]
	wctx, cancel := context.WithTimeout(ctx, 2*c.ttl)
	defer cancel()
	for {
		nodes, err := c.nodes(wctx)
		var lagging []string
		for _, n := range nodes {
			if n.Paused != p.Paused {
				lagging = append(lagging, n.Node)
			}
		}
		if err == nil && len(lagging) == 0 {
			break
		}
		select {
		case <-wctx.Done():
			return fmt.Errorf("%w: %s, but nodes %s do not follow it yet (their elector is down or older)", ErrTimeout, verb, strings.Join(lagging, ", "))
		case <-time.After(200 * time.Millisecond):
		}
	}
	if p.Paused {
		fmt.Fprintln(w, "paused: no automatic failover or campaigning until ccm resume; the leader keeps serving")
		return nil
	}
	fmt.Fprintln(w, "resumed: automatic failover again")
	return nil
}

func encodeJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

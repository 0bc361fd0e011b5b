package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/convex-cluster-manager/ccm/shared/config"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

func newPromote(stdout, stderr io.Writer) *ffcli.Command {
	fs := newFlagSet("ccm promote", stderr)
	node := fs.String("node", "", "node to make leader (default: this node's nodeId)")
	flags := config.Bind(fs)
	return &ffcli.Command{
		Name:       "promote",
		ShortUsage: "ccm promote [--node ID] [--config FILE]",
		ShortHelp:  "make a node the leader, handing over from the current one",
		FlagSet:    fs,
		Options:    config.ParseOptions(),
		Exec: func(ctx context.Context, args []string) error {
			return withClient(ctx, args, flags, func(c *client) error {
				target := *node
				if target == "" {
					target = c.cfg.NodeID
				}
				return c.promote(ctx, stdout, target)
			})
		},
	}
}

func newDemote(stdout, stderr io.Writer) *ffcli.Command {
	fs := newFlagSet("ccm demote", stderr)
	node := fs.String("node", "", "node to hand over to (default: let the cluster elect one)")
	flags := config.Bind(fs)
	return &ffcli.Command{
		Name:       "demote",
		ShortUsage: "ccm demote [--node ID] [--config FILE]",
		ShortHelp:  "make the leader step down, optionally handing over to a named node",
		FlagSet:    fs,
		Options:    config.ParseOptions(),
		Exec: func(ctx context.Context, args []string) error {
			return withClient(ctx, args, flags, func(c *client) error {
				return c.demote(ctx, stdout, *node)
			})
		},
	}
}

func withClient(ctx context.Context, args []string, flags *config.Flags, fn func(*client) error) error {
	if err := noArgs(args); err != nil {
		return err
	}
	cfg, err := flags.Loaded()
	if err != nil {
		return err
	}
	c, err := dial(ctx, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	return fn(c)
}

// handoverTimeout bounds a promote or demote: a graceful demotion drains
// the backend first (tens of seconds for a large one), then the lease TTL.
func (c *client) handoverTimeout() time.Duration { return c.ttl + 3*time.Minute }

func (c *client) promote(ctx context.Context, w io.Writer, target string) error {
	if err := c.requireNode(ctx, target); err != nil {
		return err
	}
	if l, err := c.leader(ctx); err != nil {
		return err
	} else if l != nil && l.Serving() && l.Node == target {
		fmt.Fprintf(w, "%s is already the leader (epoch %d)\n", target, l.Epoch)
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.handoverTimeout())
	defer cancel()
	ready, stop, err := c.watchReady()
	if err != nil {
		return err
	}
	defer stop()
	start := time.Now()
	if err := c.request(ctx, target, schema.ServiceElector, schema.VerbPromote, nil, nil); err != nil {
		return timeoutOr(err)
	}
	l, err := c.waitLeader(ctx, func(l *leaderEntry) bool { return l.Node == target })
	if err != nil {
		return err
	}
	return c.reportServing(ctx, w, ready, l, start)
}

// watchReady follows the role events of serving leaders (promotion
// finished), from before a handover is asked for so that none is missed.
func (c *client) watchReady() (<-chan schema.RoleEvent, func(), error) {
	ch := make(chan schema.RoleEvent, 16)
	sub, err := c.nc.Subscribe(schema.RoleSubjects(c.cfg.ClusterID), func(m *nats.Msg) {
		var ev schema.RoleEvent
		if json.Unmarshal(m.Data, &ev) == nil && ev.Role == schema.RoleLeader && ev.Ready {
			select {
			case ch <- ev:
			default: // the leader repeats it every heartbeat
			}
		}
	})
	if err != nil {
		return nil, nil, fmt.Errorf("follow role events: %w", err)
	}
	return ch, func() { sub.Unsubscribe() }, nil
}

// reportServing prints when the leader l took the key and waits until it
// serves (its backend up, the VIP on it), printing that too.
func (c *client) reportServing(ctx context.Context, w io.Writer, ready <-chan schema.RoleEvent, l *leaderEntry, start time.Time) error {
	took := time.Since(start)
	for {
		select {
		case ev := <-ready:
			if ev.Node != l.Node || ev.Epoch < l.Epoch {
				continue
			}
			fmt.Fprintf(w, "%s is leader (epoch %d); handover took %s, serving after %s\n",
				l.Node, l.Epoch, took.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
			return nil
		case <-ctx.Done():
			return timeoutOr(fmt.Errorf("%s took the leader key (epoch %d) after %s but does not serve yet: %w", l.Node, l.Epoch, took.Round(time.Millisecond), ctx.Err()))
		}
	}
}

func (c *client) demote(ctx context.Context, w io.Writer, to string) error {
	l, err := c.leader(ctx)
	if err != nil {
		return err
	}
	if l == nil || !l.Serving() {
		return fmt.Errorf("cluster %s has no serving leader to demote", c.cfg.ClusterID)
	}
	if to != "" {
		if to == l.Node {
			return fmt.Errorf("%w: --node %s is the current leader; name another node or omit --node", ErrUsage, to)
		}
		if err := c.requireNode(ctx, to); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, c.handoverTimeout())
	defer cancel()
	ready, stop, err := c.watchReady()
	if err != nil {
		return err
	}
	defer stop()
	start := time.Now()
	var reply schema.RoleReply
	if err := c.request(ctx, l.Node, schema.ServiceElector, schema.VerbDemote, schema.DemoteRequest{To: to}, &reply); err != nil {
		return timeoutOr(err)
	}
	fmt.Fprintf(w, "%s stepped down from epoch %d\n", l.Node, l.Epoch)
	nl, err := c.waitLeader(ctx, func(n *leaderEntry) bool {
		return n.Epoch > l.Epoch && (to == "" || n.Node == to)
	})
	if err != nil {
		return err
	}
	return c.reportServing(ctx, w, ready, nl, start)
}

func timeoutOr(err error) error {
	if errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, ErrTimeout) {
		return fmt.Errorf("%w: %w", ErrTimeout, err)
	}
	return err
}

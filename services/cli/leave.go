package cli

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/convex-cluster-manager/ccm/shared/config"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

func newLeave(stdout, stderr io.Writer) *ffcli.Command {
	fs := newFlagSet("ccm leave", stderr)
	flags := config.Bind(fs)
	return &ffcli.Command{
		Name:       "leave",
		ShortUsage: "ccm leave [--config FILE]",
		ShortHelp:  "take this node out of the cluster, handing over first if it leads",
		FlagSet:    fs,
		Options:    config.ParseOptions(),
		Exec: func(ctx context.Context, args []string) error {
			return withClient(ctx, args, flags, func(c *client) error {
				return c.leave(ctx, stdout)
			})
		},
	}
}

func (c *client) leave(ctx context.Context, w io.Writer) error {
	node := c.cfg.NodeID
	if err := c.requireNode(ctx, node); err != nil {
		return err
	}
	l, err := c.leader(ctx)
	if err != nil {
		return err
	}
	if l != nil && l.Serving() && l.Node == node {
		if err := c.demote(ctx, w, ""); err != nil {
			return fmt.Errorf("hand over before leaving: %w", err)
		}
	}
	if err := c.request(ctx, node, schema.ServiceElector, schema.VerbLeave, nil, nil); err != nil {
		return err
	}
	// Replication stops too, if it runs here.
	if err := c.request(ctx, node, schema.ServiceWalapply, schema.VerbLeave, nil, nil); err != nil && !errors.Is(err, errNotRunning) {
		return err
	}
	if err := c.request(ctx, node, schema.ServiceStorage, schema.VerbLeave, nil, nil); err != nil && !errors.Is(err, errNotRunning) {
		return err
	}
	c.kv.Delete(ctx, schema.ApplyKey(node))
	c.kv.Delete(ctx, schema.StorageKey(node))
	fmt.Fprintf(w, "%s left cluster %s; stop its units so that a restart does not bring it back:\n  systemctl disable --now ccm.target\n", node, c.cfg.ClusterID)
	return nil
}

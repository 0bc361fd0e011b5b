package cli

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/convex-cluster-manager/ccm/shared/config"
	"github.com/convex-cluster-manager/ccm/shared/epochlog"
)

func newHistory(stdout, stderr io.Writer) *ffcli.Command {
	fs := newFlagSet("ccm history", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	last := fs.Int("last", 20, "show the newest N epochs (0: all kept)")
	flags := config.Bind(fs)
	return &ffcli.Command{
		Name:       "history",
		ShortUsage: "ccm history [--json] [--last N] [--config FILE]",
		ShortHelp:  "list the leader epochs: node, when each began, served and ended, and why",
		FlagSet:    fs,
		Options:    config.ParseOptions(),
		Exec: func(ctx context.Context, args []string) error {
			if *last < 0 {
				return fmt.Errorf("%w: --last %d: want 0 (all) or more", ErrUsage, *last)
			}
			return withClient(ctx, args, flags, func(c *client) error {
				terms, err := c.history(ctx)
				if err != nil {
					return err
				}
				if *last > 0 && len(terms) > *last {
					terms = terms[len(terms)-*last:]
				}
				if *asJSON {
					if terms == nil {
						terms = []epochlog.Term{}
					}
					return printJSON(stdout, terms)
				}
				printHistory(stdout, terms)
				return nil
			})
		},
	}
}

// history reads the cluster's terms, oldest first.
func (c *client) history(ctx context.Context) ([]epochlog.Term, error) {
	js, err := jetstream.New(c.nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	events, err := epochlog.Read(ctx, js, c.cfg.ClusterID)
	if err != nil {
		return nil, err
	}
	return epochlog.Terms(events), nil
}

func printHistory(w io.Writer, terms []epochlog.Term) {
	if len(terms) == 0 {
		fmt.Fprintln(w, "no epochs recorded yet")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 2, 2, ' ', 0)
	fmt.Fprintln(tw, "EPOCH\tNODE\tBEGAN\tSERVING AFTER\tENDED\tLED FOR\tHOW IT BEGAN\tHOW IT ENDED")
	stamp := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.Local().Format("2006-01-02 15:04:05.000")
	}
	for _, t := range terms {
		served, ended, led, how := "never", "-", "-", t.HowEnded
		if !t.Served.IsZero() {
			served = t.Served.Sub(t.Began).Round(time.Millisecond).String()
		}
		if !t.Ended.IsZero() {
			ended, led = stamp(t.Ended), t.Ended.Sub(t.Began).Round(time.Second).String()
		} else {
			ended, how = "leading", ""
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.Epoch, t.Node, stamp(t.Began), served, ended, led, t.HowBegan, how)
		for _, n := range t.Notes {
			fmt.Fprintf(tw, "\t\t%s\t%s\t\t\t\t\n", stamp(n.At), n.What)
		}
	}
	tw.Flush()
}

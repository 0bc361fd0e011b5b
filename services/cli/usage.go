package cli

import (
	"cmp"
	"flag"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/convex-cluster-manager/ccm/shared/config"
)

// usage is every command's help: its own flags first, then the cluster
// settings every command accepts (they override cluster.json and the
// CCM_* environment), which would otherwise bury them.
func usage(c *ffcli.Command) string {
	own := flag.NewFlagSet(c.Name, flag.ContinueOnError)
	var settings []*flag.Flag
	c.FlagSet.VisitAll(func(f *flag.Flag) {
		if config.IsSetting(f.Name) {
			settings = append(settings, f)
		} else {
			own.Var(f.Value, f.Name, f.Usage)
		}
	})
	short := *c
	short.FlagSet = own
	var b strings.Builder
	b.WriteString(ffcli.DefaultUsageFunc(&short))
	if len(settings) > 0 {
		fmt.Fprintf(&b, "\nCLUSTER SETTINGS (flags override %s and the CCM_* environment)\n", config.DefaultPath)
		tw := tabwriter.NewWriter(&b, 0, 2, 2, ' ', 0)
		for _, f := range settings {
			fmt.Fprintf(tw, "  -%s %s\t%s\n", f.Name, cmp.Or(f.DefValue, "..."), f.Usage)
		}
		tw.Flush()
	}
	return b.String()
}

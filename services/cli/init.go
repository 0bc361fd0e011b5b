package cli

import (
	"context"
	"fmt"
	"io"

	"github.com/peterbourgon/ff/v3"
	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/convex-cluster-manager/ccm/shared/config"
)

func newInit(stdout, stderr io.Writer) *ffcli.Command {
	fs := newFlagSet("ccm init", stderr)
	path := fs.String("config", config.DefaultPath, "file to write")
	force := fs.Bool("force", false, "overwrite an existing file")
	settings := config.BindSettings(fs)
	return &ffcli.Command{
		Name:       "init",
		ShortUsage: "ccm init --cluster-id ID --node-id ID [--config FILE] [--force] [setting flags]",
		ShortHelp:  "write a validated node configuration",
		LongHelp: "Writes the JSON configuration of this node, with every setting taken from the\n" +
			"flags, then CCM_* environment variables, then the defaults. Refuses to replace\n" +
			"an existing file unless --force is given.",
		FlagSet: fs,
		Options: []ff.Option{ff.WithEnvVarPrefix(config.EnvPrefix)},
		Exec: func(ctx context.Context, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			cfg := settings.Config()
			if err := config.Write(*path, cfg, *force); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "wrote %s (cluster %s, node %s)\n", *path, cfg.ClusterID, cfg.NodeID)
			return nil
		},
	}
}

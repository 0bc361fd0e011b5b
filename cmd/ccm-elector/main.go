// Command ccm-elector campaigns for the cluster's leader key, renews it with
// revision fencing and publishes this node's role.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/convex-cluster-manager/ccm/services/elector"
	"github.com/convex-cluster-manager/ccm/shared/daemon"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "ccm-elector:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	return daemon.Main(ctx, elector.Spec(), args, stderr)
}

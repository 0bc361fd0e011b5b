// Command ccm-walapply applies the WAL stream to this passive node's shadow
// database and reports the applied position and lag.
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

	"github.com/convex-cluster-manager/ccm/services/walapply"
	"github.com/convex-cluster-manager/ccm/shared/daemon"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "ccm-walapply:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	return daemon.Main(ctx, walapply.Spec(), args, stderr)
}

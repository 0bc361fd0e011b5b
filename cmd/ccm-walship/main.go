// Command ccm-walship captures the leader database's WAL with Litestream and
// appends it to the fenced WAL stream while this node leads.
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

	"github.com/convex-cluster-manager/ccm/services/walship"
	"github.com/convex-cluster-manager/ccm/shared/daemon"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "ccm-walship:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	return daemon.Main(ctx, walship.Spec(), args, stderr)
}

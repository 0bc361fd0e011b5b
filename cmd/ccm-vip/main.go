// Command ccm-vip holds the floating IP while this node is the ready leader
// and announces it with gratuitous ARP.
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

	"github.com/convex-cluster-manager/ccm/services/vip"
	"github.com/convex-cluster-manager/ccm/shared/daemon"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "ccm-vip:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	return daemon.Main(ctx, vip.Spec(), args, stderr)
}

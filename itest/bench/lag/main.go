// Command lag measures replication lag from commit on the leader to
// visibility on a passive, for ccm (ccm-walship → NATS → ccm-walapply, as
// separate processes) and for the baseline a user would otherwise pick:
// Litestream replicating to NATS with `litestream restore -f`. It also
// times `ccm join` of a large database and the mirroring of the storage
// directory (many small files, one large file). Run by `make bench`.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "lag:", err)
		os.Exit(1)
	}
}

type options struct {
	rates      []int
	duration   time.Duration
	bin        string
	litestream string
	bootstrap  int64
	keep       bool
	natsSync   string // nats-server jetstream.sync_interval ("" = its default, 2m)

	storageFiles, storageRuns int
	storageBigMiB             int64
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("lag", flag.ContinueOnError)
	var o options
	rates := fs.String("rates", "100,500,1000", "commit rates to measure, per second (\"\" to skip)")
	fs.DurationVar(&o.duration, "duration", 30*time.Second, "writing time per rate")
	fs.StringVar(&o.bin, "bin", "bin", "directory of the ccm binaries")
	fs.StringVar(&o.litestream, "litestream", "litestream", "litestream binary for the baseline (\"\" to skip)")
	fs.Int64Var(&o.bootstrap, "bootstrap-mib", 1024, "size of the database for the ccm join measurement (0 to skip)")
	fs.BoolVar(&o.keep, "keep", false, "keep the work directories")
	fs.StringVar(&o.natsSync, "nats-sync-interval", "", "nats-server JetStream sync_interval, e.g. always (\"\": the server's default, 2m)")
	fs.IntVar(&o.storageFiles, "storage-files", 10000, "small files for the storage mirroring measurement (0 to skip it)")
	fs.Int64Var(&o.storageBigMiB, "storage-big-mib", 1024, "size of the large file for the storage mirroring measurement")
	fs.IntVar(&o.storageRuns, "storage-runs", 3, "runs of the storage mirroring measurement")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for _, r := range strings.Split(*rates, ",") {
		if *rates == "" {
			break // -rates "": skip the lag measurement
		}
		n, err := strconv.Atoi(strings.TrimSpace(r))
		if err != nil || n <= 0 {
			return fmt.Errorf("-rates: %q is not a positive number", r)
		}
		o.rates = append(o.rates, n)
	}
	fmt.Printf("# replication lag, commit on the leader -> row visible on the passive; %s per rate, ~200-byte rows\n", o.duration)
	fmt.Printf("# machine: %s\n", machine())
	if o.natsSync != "" {
		fmt.Printf("# nats-server jetstream sync_interval: %s\n", o.natsSync)
	}
	for _, rate := range o.rates {
		r, err := measureCCM(ctx, o, rate)
		if err != nil {
			return fmt.Errorf("ccm at %d/s: %w", rate, err)
		}
		r.print()
		if o.litestream != "" {
			b, err := measureLitestream(ctx, o, rate)
			if err != nil {
				return fmt.Errorf("litestream at %d/s: %w", rate, err)
			}
			b.print()
			fmt.Printf("  ratio litestream/ccm: p50 %.0fx, p99 %.0fx\n", ratio(b.p(50), r.p(50)), ratio(b.p(99), r.p(99)))
		}
	}
	if o.bootstrap > 0 {
		if err := measureJoin(ctx, o); err != nil {
			return fmt.Errorf("bootstrap: %w", err)
		}
	}
	if o.storageFiles > 0 {
		if err := benchStorage(ctx, o); err != nil {
			return fmt.Errorf("storage: %w", err)
		}
	}
	return nil
}

func ratio(a, b time.Duration) float64 {
	if b <= 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// Package natsconn opens the NATS connection every ccm binary uses, from the
// cluster configuration.
package natsconn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/convex-cluster-manager/ccm/shared/config"
)

// ErrUnreachable wraps the failure to reach any configured NATS server.
var ErrUnreachable = errors.New("NATS unreachable")

// Options are nats.go options derived from the configuration: the user
// (credentials or nkey seed), TLS files and a client name.
func Options(cfg config.NATS, name string) ([]nats.Option, error) {
	opts := []nats.Option{nats.Name(name)}
	if cfg.Credentials != "" {
		opts = append(opts, nats.UserCredentials(cfg.Credentials))
	}
	if cfg.NkeyFile != "" {
		o, err := nats.NkeyOptionFromSeed(cfg.NkeyFile)
		if err != nil {
			return nil, fmt.Errorf("NATS nkey seed %s: %w", cfg.NkeyFile, err)
		}
		opts = append(opts, o)
	}
	if cfg.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(cfg.InboxPrefix))
	}
	if cfg.TLS.CAFile != "" {
		opts = append(opts, nats.RootCAs(cfg.TLS.CAFile))
	}
	if cfg.TLS.CertFile != "" {
		opts = append(opts, nats.ClientCert(cfg.TLS.CertFile, cfg.TLS.KeyFile))
	}
	return opts, nil
}

// Daemon connects for a long-running daemon: it reconnects forever, starts
// even if no server is up yet (connecting in the background), and logs every
// change of connection state.
func Daemon(cfg config.NATS, name string, log *slog.Logger) (*nats.Conn, error) {
	opts, err := Options(cfg, name)
	if err != nil {
		return nil, err
	}
	opts = append(opts,
		// Servers are tried in the configured order: list the node's own
		// NATS server first, so that a partitioned node loses its lease
		// with its server and the others keep theirs.
		nats.DontRandomize(),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(250*time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.PingInterval(5*time.Second),
		nats.MaxPingsOutstanding(2),
		nats.ConnectHandler(func(nc *nats.Conn) {
			log.Info("nats connected", "server", nc.ConnectedUrlRedacted())
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Warn("nats disconnected", "err", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("nats reconnected", "server", nc.ConnectedUrlRedacted())
		}),
		nats.ClosedHandler(func(*nats.Conn) { log.Info("nats connection closed") }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			log.Error("nats async error", "subject", subj, "err", err)
		}),
	)
	nc, err := nats.Connect(strings.Join(cfg.Servers, ","), opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS %s: %w", strings.Join(cfg.Servers, ","), err)
	}
	return nc, nil
}

// clientAsyncError prints a command-line client's asynchronous NATS errors
// (a permissions violation: the subject its user may not use).
func clientAsyncError(_ *nats.Conn, _ *nats.Subscription, err error) {
	fmt.Fprintf(os.Stderr, "nats: %v\n", err)
}

// Client connects once for a command-line client, failing fast with
// ErrUnreachable when no server answers within timeout.
func Client(ctx context.Context, cfg config.NATS, name string, timeout time.Duration) (*nats.Conn, error) {
	opts, err := Options(cfg, name)
	if err != nil {
		return nil, err
	}
	opts = append(opts, nats.Timeout(timeout), nats.NoReconnect(), nats.DontRandomize(), nats.ErrorHandler(clientAsyncError))
	type result struct {
		nc  *nats.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		nc, err := nats.Connect(strings.Join(cfg.Servers, ","), opts...)
		ch <- result{nc, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrUnreachable, strings.Join(cfg.Servers, ","), r.err)
		}
		return r.nc, nil
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.nc != nil {
				r.nc.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

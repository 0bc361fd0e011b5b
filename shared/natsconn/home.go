package natsconn

import (
	"context"
	"log/slog"
	"net/url"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/convex-cluster-manager/ccm/shared/config"
)

// homeEvery is how often a daemon connected elsewhere checks whether its
// own NATS server answers again.
const homeEvery = 5 * time.Second

// ReturnHome moves nc back to the first configured server (the node's own)
// once that answers again, until ctx ends. A daemon that failed over to
// another node's server stayed there: the node then no longer lost its
// lease with its own server, and the elector took the other node's server
// for its own when placing stream leaders. A forced reconnect tries the
// next server in the pool, so reaching home may take a few checks.
func ReturnHome(ctx context.Context, nc *nats.Conn, cfg config.NATS, log *slog.Logger) error {
	if len(cfg.Servers) < 2 {
		return nil
	}
	home := cfg.Servers[0]
	t := time.NewTicker(homeEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if !nc.IsConnected() || sameServer(nc.ConnectedUrl(), home) {
			continue
		}
		// Compared by server name: a URL learnt from the cluster may name
		// the home server by another address.
		if name := serverName(ctx, cfg, home); name == "" || name == nc.ConnectedServerName() {
			continue
		}
		log.Info("nats: the node's own server answers again: reconnecting to it", "home", redact(home), "connected", nc.ConnectedUrlRedacted())
		if err := nc.ForceReconnect(); err != nil {
			log.Warn("nats: reconnect to the node's own server", "err", err)
		}
	}
}

// serverName connects to server alone and returns its name, or "" when it
// does not answer within a second.
func serverName(ctx context.Context, cfg config.NATS, server string) string {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	cfg.Servers = []string{server}
	nc, err := Client(ctx, cfg, "ccm-probe", time.Second)
	if err != nil {
		return ""
	}
	defer nc.Close()
	if nc.FlushWithContext(ctx) != nil {
		return ""
	}
	return nc.ConnectedServerName()
}

// sameServer reports whether two server URLs name the same host and port.
func sameServer(a, b string) bool {
	ua, err1 := url.Parse(a)
	ub, err2 := url.Parse(b)
	if err1 != nil || err2 != nil {
		return a == b
	}
	return ua.Host == ub.Host
}

// redact drops credentials from a server URL for logging.
func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return s
	}
	return u.Redacted()
}

package natsconn_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/shared/config"
	"github.com/convex-cluster-manager/ccm/shared/natsconn"
	"github.com/convex-cluster-manager/ccm/shared/natstest"
	"github.com/convex-cluster-manager/ccm/shared/waitfor"
)

// TestReturnHome: a daemon whose own NATS server (listed first) stopped
// answering fails over to another; once its own answers again it moves
// back. It stayed on the other node's server: a later failure of its own
// then cut nothing off, and the elector placed stream leaders as if the
// other node's server were its own (seen in the loss benchmark).
func TestReturnHome(t *testing.T) {
	srvs := natstest.Cluster(t, 2)
	home := natstest.NewProxy(t, srvs[0].Addr().String())
	cfg := config.NATS{Servers: []string{home.URL(), srvs[1].ClientURL()}}
	nc, err := natsconn.Daemon(cfg, "home-test", slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	defer nc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- natsconn.ReturnHome(ctx, nc, cfg, slog.New(slog.DiscardHandler)) }()
	defer func() { cancel(); <-done }()
	waitOn(t, nc, "s1", 10*time.Second)

	home.Cut()
	home.Drop()
	waitOn(t, nc, "s2", 10*time.Second)
	// While its own server does not answer, it stays put.
	reconnects := nc.Stats().Reconnects
	time.Sleep(6 * time.Second)
	if n := nc.Stats().Reconnects; n != reconnects || nc.ConnectedServerName() != "s2" {
		t.Fatalf("with its own server cut off: %d reconnects more, on %q, want none, on s2", n-reconnects, nc.ConnectedServerName())
	}
	home.Heal()
	start := time.Now()
	waitOn(t, nc, "s1", 30*time.Second)
	t.Logf("back on its own server after %s", time.Since(start).Round(time.Millisecond))
	// And there it stays.
	reconnects = nc.Stats().Reconnects
	time.Sleep(6 * time.Second)
	if n := nc.Stats().Reconnects; n != reconnects {
		t.Fatalf("home again: %d more reconnects, want none", n-reconnects)
	}
}

func waitOn(t *testing.T, nc *nats.Conn, server string, within time.Duration) {
	t.Helper()
	waitfor.Cond(t, within, func() error {
		if name := nc.ConnectedServerName(); name != server || !nc.IsConnected() {
			return fmt.Errorf("connected to %q (%v), want %s", name, nc.Status(), server)
		}
		return nil
	})
}

package elector_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"
	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/services/elector"
	et "github.com/convex-cluster-manager/ccm/services/elector/electortest"
	"github.com/convex-cluster-manager/ccm/shared/daemon"
	"github.com/convex-cluster-manager/ccm/shared/natstest"
)

// TestRuntime checks what systemd and operators see of a running elector:
// sd_notify readiness, watchdog and stopping; /metrics; and the micro
// service with its cluster and node metadata.
func TestRuntime(t *testing.T) {
	srv := natstest.Server(t)
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	require.NoError(t, err)
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "200000")

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	metricsAddr := ln.Addr().String()
	ln.Close()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- daemon.Run(ctx, elector.Spec(), et.Config("rt", "n1", srv.ClientURL()), et.Logger(), metricsAddr)
	}()

	got := map[string]int{}
	read := func(until func() bool) {
		t.Helper()
		buf := make([]byte, 4096)
		deadline := time.Now().Add(10 * time.Second)
		for !until() {
			conn.SetReadDeadline(deadline)
			n, err := conn.Read(buf)
			require.NoErrorf(t, err, "sd_notify messages so far %v", got)
			for _, line := range strings.Split(string(buf[:n]), "\n") {
				k, _, _ := strings.Cut(line, "=")
				if strings.HasPrefix(line, "STATUS=") {
					got[line]++
				}
				got[k]++
			}
		}
	}
	read(func() bool { return got["READY"] > 0 && got["WATCHDOG"] >= 2 && got["STATUS=leader of epoch 1"] > 0 })

	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"ccm_elector_is_leader 1", "ccm_elector_renewals_total", `ccm_build_info{binary="ccm-elector"`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	nc := natstest.Connect(t, srv.ClientURL())
	msg, err := nc.Request("$SRV.INFO.ccm-elector", nil, 2*time.Second)
	require.NoError(t, err)
	var info micro.Info
	require.NoError(t, json.Unmarshal(msg.Data, &info))
	if info.Metadata["cluster"] != "rt" || info.Metadata["node"] != "n1" {
		t.Errorf("micro metadata = %v, want cluster rt node n1", info.Metadata)
	}
	var subjects []string
	for _, ep := range info.Endpoints {
		subjects = append(subjects, ep.Subject)
	}
	if want := "ccm.rt.n1.elector.status ccm.rt.n1.elector.promote ccm.rt.n1.elector.demote ccm.rt.n1.elector.leave"; strings.Join(subjects, " ") != want {
		t.Errorf("endpoints = %v, want %s", subjects, want)
	}
	msg, err = nc.Request("ccm.rt.n1.elector.status", nil, 2*time.Second)
	require.NoError(t, err)
	if !strings.Contains(string(msg.Data), `"role":"leader"`) || !strings.Contains(string(msg.Data), `"healthy":true`) {
		t.Errorf("status reply = %s", msg.Data)
	}

	cancel()
	read(func() bool { return got["STOPPING"] > 0 })
	if err := <-done; err != nil {
		t.Fatal(fmt.Errorf("run: %w", err))
	}
}

package elector_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/shared/schema"
	"github.com/convex-cluster-manager/ccm/shared/waitfor"
)

// serveChecks serves n's load-balancer endpoints and returns GET's status
// and body for a path.
func serveChecks(t *testing.T, n *node) func(path string) (int, map[string]any) {
	mux := http.NewServeMux()
	n.El.AddHTTP(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return func(path string) (int, map[string]any) {
		resp, err := http.Get(srv.URL + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var v map[string]any
		json.Unmarshal(b, &v)
		return resp.StatusCode, v
	}
}

// TestLoadBalancerChecks: /leader (/primary) is 200 on the serving leader
// only, and moves with a switchover; /replica is 503 on the leader and on
// a passive without replication, with the reason; /health is 200 on both.
func TestLoadBalancerChecks(t *testing.T) {
	c := startCluster(t, 2)
	l := waitLeader(t, c.nodes, testTTL)
	p := others(c.nodes, l)[0]
	serving := func(n *node) {
		t.Helper()
		waitfor.Cond(t, testTTL, func() error {
			if s := n.El.State(); s.Role != schema.RoleLeader || !s.Ready {
				return fmt.Errorf("%s not serving: %+v", n.ID, s)
			}
			return nil
		})
	}
	serving(l)
	onL, onP := serveChecks(t, l), serveChecks(t, p)
	for _, tc := range []struct {
		get  func(string) (int, map[string]any)
		path string
		code int
		why  string
	}{
		{onL, "/leader", 200, ""}, {onL, "/primary", 200, ""}, {onP, "/leader", 503, "not the leader"},
		{onL, "/replica", 503, "not a passive"}, {onP, "/replica", 503, "is ccm-walapply running?"},
		{onL, "/health", 200, ""}, {onP, "/health", 200, ""},
	} {
		code, body := tc.get(tc.path)
		why, _ := body["reason"].(string)
		if code != tc.code || !strings.Contains(why, tc.why) {
			t.Errorf("GET %s on %s: %d %v, want %d (%q)", tc.path, body["node"], code, body, tc.code, tc.why)
		}
	}
	require.NoError(t, l.El.Demote(context.Background(), p.ID))
	serving(p)
	if code, body := onL("/leader"); code != 503 {
		t.Errorf("GET /leader on the demoted %s: %d %v", l.ID, code, body)
	}
	if code, body := onP("/leader"); code != 200 {
		t.Errorf("GET /leader on the new leader %s: %d %v", p.ID, code, body)
	}
}

package elector_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/shared/natstest"
	"github.com/convex-cluster-manager/ccm/shared/schema"
	"github.com/convex-cluster-manager/ccm/shared/waitfor"
)

// TestHooksRunInOrderWithoutBlockingTheElection: the configured hooks run
// with the action, role and cluster as arguments and the details in CCM_*
// variables, in the order of the events; a hook that hangs (here the
// leader's) is killed at the timeout and holds up neither the election
// (the leader steps down meanwhile) nor, beyond its timeout, the hooks
// after it.
func TestHooksRunInOrderWithoutBlockingTheElection(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "hooks.log")
	hook := filepath.Join(dir, "hook.sh")
	require.NoError(t, os.WriteFile(hook, []byte(`#!/bin/sh
echo "$1 $2 $3 node=$CCM_NODE epoch=$CCM_EPOCH from=$CCM_PREVIOUS_ROLE leader=$CCM_LEADER" >> `+log+`
if [ "$1" = on_role_change ] && [ "$2" = leader ]; then sleep 60; fi
`), 0o755))
	srv := natstest.Server(t)
	cfg := testConfig("test", "n1", srv.ClientURL())
	cfg.Hooks.OnStart, cfg.Hooks.OnRoleChange, cfg.Hooks.OnStop, cfg.Hooks.TimeoutMs = hook, hook, hook, 1500
	n1 := startNode(t, cfg)
	l := waitLeader(t, []*node{n1}, testTTL)
	epoch := l.El.State().Epoch

	// The leader's hook hangs: stepping down does not wait for it.
	start := time.Now()
	require.NoError(t, n1.El.Demote(context.Background(), ""))
	if s := n1.El.State(); s.Role != schema.RolePassive {
		t.Fatalf("after demote: %+v", s)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("demote took %s behind a hanging hook", took)
	}
	read := func() []string {
		b, _ := os.ReadFile(log)
		return strings.Split(strings.TrimSpace(string(b)), "\n")
	}
	want := []string{
		"on_start passive test node=n1 epoch=0 from=starting leader=",
		fmt.Sprintf("on_role_change leader test node=n1 epoch=%d from=passive leader=n1", epoch),
		fmt.Sprintf("on_role_change passive test node=n1 epoch=%d from=leader leader=", epoch),
	}
	waitfor.Cond(t, 5*time.Second, func() error {
		if got := read(); len(got) < 3 || strings.Join(got[:3], "\n") != strings.Join(want, "\n") {
			return fmt.Errorf("hook runs:\n%s\nwant first:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		return nil
	})
	n1.Stop()
	if got := read(); !strings.HasPrefix(got[len(got)-1], "on_stop ") {
		t.Errorf("last hook run %q, want on_stop", got[len(got)-1])
	}
}

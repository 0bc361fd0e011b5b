package daemon_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/convex-cluster-manager/ccm/shared/buildinfo"
	"github.com/convex-cluster-manager/ccm/shared/daemon"
)

var spec = daemon.Spec{Name: "ccm-test", New: func(daemon.Env) (daemon.Daemon, error) {
	return nil, errors.New("not reached: the tests stop before NATS")
}}

func TestVersionNeedsNoConfiguration(t *testing.T) {
	var out, errs bytes.Buffer
	err := daemon.Main(context.Background(), spec, []string{"-version", "-config", "/nonexistent.json"}, &out, &errs)
	if err != nil {
		t.Fatalf("-version: %v (stderr %q)", err, errs.String())
	}
	if got, want := out.String(), "ccm-test "+buildinfo.Version()+"\n"; got != want {
		t.Fatalf("-version printed %q, want %q", got, want)
	}
}

func TestConfigurationErrorsAreMarked(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "cluster.json")
	if err := os.WriteFile(bad, []byte(`{"clusterId": "c1", "nodeId": "n1", "election": {"leaderTtlMs": "ten"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, args := range map[string][]string{
		"file":      {"-config", bad},
		"missing":   {"-config", "/nonexistent.json"},
		"flag":      {"-no-such-flag"},
		"log level": {"-log-level", "loud", "-cluster-id", "c1", "-node-id", "n1"},
	} {
		t.Run(name, func(t *testing.T) {
			var out, errs bytes.Buffer
			err := daemon.Main(context.Background(), spec, args, &out, &errs)
			if !errors.Is(err, daemon.ErrConfig) {
				t.Fatalf("%v: %v, want a configuration error (exit %d)", args, err, daemon.ExitConfig)
			}
			t.Logf("%v: %v", args, err)
			if name == "file" && !strings.Contains(err.Error(), "leaderTtlMs") {
				t.Errorf("error does not name the bad field: %v", err)
			}
		})
	}
}

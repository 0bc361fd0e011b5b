// Package services_test holds checks that span every service.
package services_test

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const module = "github.com/convex-cluster-manager/ccm/"

// service names the service a package belongs to ("walapply" for
// services/walapply and its subpackages), or "" outside services/.
func service(pkg string) string {
	rest, ok := strings.CutPrefix(pkg, module+"services/")
	if !ok {
		return ""
	}
	name, _, _ := strings.Cut(rest, "/")
	return name
}

// TestServicesDoNotImportEachOther keeps the daemons' only contract the NATS
// wire schema in shared/: a service (its non-test code) imports no other
// service, and shared/ imports none.
func TestServicesDoNotImportEachOther(t *testing.T) {
	out, err := exec.Command("go", "list", "-json=ImportPath,Deps", "../services/...", "../shared/...", "../cmd/...").Output()
	require.NoErrorf(t, err, "go list")
	dec := json.NewDecoder(strings.NewReader(string(out)))
	checked := 0
	for dec.More() {
		var p struct {
			ImportPath string
			Deps       []string
		}
		require.NoErrorf(t, dec.Decode(&p), "go list output")
		checked++
		own := service(p.ImportPath)
		cmd := strings.HasPrefix(p.ImportPath, module+"cmd/")
		for _, dep := range p.Deps {
			other := service(dep)
			if other == "" || other == own || cmd {
				continue
			}
			t.Errorf("%s imports %s: services talk only over NATS; move what they share to shared/",
				strings.TrimPrefix(p.ImportPath, module), strings.TrimPrefix(dep, module))
		}
	}
	if checked < 10 {
		t.Fatalf("go list reported %d packages; the check would prove nothing", checked)
	}
}

// TestCommandsLinkOneService keeps each binary to its own service.
func TestCommandsLinkOneService(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Deps " "}}`, "../cmd/...").Output()
	require.NoErrorf(t, err, "go list")
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 8 {
		t.Fatalf("go list reported %d commands, want the 8 binaries", len(lines))
	}
	for _, line := range lines {
		fields := strings.Fields(line)
		seen := map[string]bool{}
		for _, dep := range fields[1:] {
			if s := service(dep); s != "" {
				seen[s] = true
			}
		}
		if len(seen) > 1 {
			t.Errorf("%s links services %v: a binary runs one service", strings.TrimPrefix(fields[0], module), seen)
		}
	}
}

// TestCLILinksNoDaemonRuntime keeps the ccm command a NATS client: it links
// neither the daemon runtime nor what only daemons need (sd_notify, the
// Prometheus client, Litestream).
func TestCLILinksNoDaemonRuntime(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "../cmd/ccm").Output()
	require.NoErrorf(t, err, "go list")
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list reported %d dependencies of cmd/ccm; the check would prove nothing", len(deps))
	}
	forbidden := []string{module + "shared/daemon", "github.com/coreos/go-systemd", "github.com/prometheus/client_golang", "github.com/benbjohnson/litestream"}
	for _, dep := range deps {
		for _, f := range forbidden {
			if dep == f || strings.HasPrefix(dep, f+"/") {
				t.Errorf("cmd/ccm links %s: the CLI talks to the daemons over NATS and links none of their runtime", dep)
			}
		}
	}
}

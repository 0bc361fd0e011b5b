//go:build integration

package itest

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/convex-cluster-manager/ccm/shared/config"
	"github.com/convex-cluster-manager/ccm/shared/natsauth"
	"github.com/convex-cluster-manager/ccm/shared/natsconn"
	"github.com/convex-cluster-manager/ccm/shared/natstest"
)

// secure generates the cluster's NATS security as `ccm nats-setup` does
// (TLS for clients and routes, a user per node, the operator's and the
// monitoring user, their permissions) for nodes at ips, and returns the
// directory on the host that holds it.
func secure(t *testing.T, cluster string, ips []string) string {
	t.Helper()
	s := natsauth.Setup{Cluster: cluster, InstallDir: natsauth.DefaultInstallDir, StoreDir: natsauth.DefaultStoreDir,
		HTTPPort: natsauth.DefaultHTTPPort, OperatorOnNodes: true}
	for i, ip := range ips {
		n, err := natsauth.ParseNode("n" + string(rune('1'+i)) + "=" + ip)
		if err != nil {
			t.Fatal(err)
		}
		s.Nodes = append(s.Nodes, n)
	}
	dir := filepath.Join(t.TempDir(), "nats")
	if err := natsauth.Generate(s, dir, false); err != nil {
		t.Fatalf("nats-setup: %v", err)
	}
	return dir
}

// install puts n's generated files in the install directory (with the
// operator's seed), its server configuration where the node image's
// nats-server unit reads it, and the monitoring user's seed beside them;
// then restarts nats-server.
func (c *Cluster) install(t *testing.T, n *Node) {
	t.Helper()
	ctx := context.Background()
	put := func(src, dst string, mode int64) {
		if err := n.C.CopyFileToContainer(ctx, src, dst, mode); err != nil {
			t.Fatalf("%s: copy %s to %s: %v", n.Name, src, dst, err)
		}
	}
	entries, err := os.ReadDir(filepath.Join(c.natsDir, n.Name))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		src := filepath.Join(c.natsDir, n.Name, e.Name())
		st, _ := os.Stat(src)
		put(src, filepath.Join(natsauth.DefaultInstallDir, e.Name()), int64(st.Mode().Perm()))
	}
	put(filepath.Join(c.natsDir, "users", natsauth.NkeyFile(natsauth.MonitorUser)), filepath.Join(natsauth.DefaultInstallDir, natsauth.NkeyFile(natsauth.MonitorUser)), 0o600)
	// The node's seed is read by ccm-elector and ccm-vip, which run as
	// user ccm (docs/security.md).
	seed := filepath.Join(natsauth.DefaultInstallDir, natsauth.NkeyFile(n.Name))
	n.Must(t, "sh", "-c", "chgrp ccm "+seed+" && chmod 0640 "+seed)
	n.Must(t, "cp", filepath.Join(natsauth.DefaultInstallDir, natsauth.ServerConfFile), "/etc/nats/nats.conf")
	n.Must(t, "systemctl", "restart", "nats-server")
	// CCM_ITEST_LOG_LEVEL (debug, …) sets every ccm daemon's log level
	// (Litestream's syncs and checkpoints are logged at debug), through a
	// drop-in for every unit named ccm-*.
	if lv := os.Getenv("CCM_ITEST_LOG_LEVEL"); lv != "" {
		n.Must(t, "sh", "-c", "mkdir -p /etc/systemd/system/ccm-.service.d && printf '[Service]\\nEnvironment=CCM_LOG_LEVEL=%s\\n' "+lv+
			" > /etc/systemd/system/ccm-.service.d/log-level.conf && systemctl daemon-reload")
	}
}

// UserEnv is the environment in which the ccm CLI on a node acts as user
// (natsauth.MonitorUser): the user's generated seed and inbox prefix as
// the CLI's user (nats.cli), with the node's servers and CA.
func (c *Cluster) UserEnv(t *testing.T, user string) []string {
	t.Helper()
	f, err := os.Open(filepath.Join(c.natsDir, "users", user+".env"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var env []string
	for sc := bufio.NewScanner(f); sc.Scan(); {
		line := sc.Text()
		for _, k := range []string{"NKEY_FILE", "INBOX_PREFIX"} {
			if v, ok := strings.CutPrefix(line, "CCM_NATS_"+k+"="); ok {
				env = append(env, "CCM_NATS_CLI_"+k+"="+v)
			}
		}
	}
	return env
}

// NATS connects from the host to n's NATS server as user, with TLS.
func (c *Cluster) NATS(t *testing.T, n *Node, user string) (*nats.Conn, error) {
	t.Helper()
	dir := filepath.Join(c.natsDir, "users")
	if user != natsauth.OperatorUser && user != natsauth.MonitorUser {
		dir = filepath.Join(c.natsDir, user)
	}
	cfg := config.NATS{Servers: []string{"tls://" + n.IP + ":4222"}, NkeyFile: filepath.Join(dir, natsauth.NkeyFile(user)),
		TLS: config.TLS{CAFile: filepath.Join(c.natsDir, natsauth.CAFile)}, InboxPrefix: natsauth.InboxPrefix(user)}
	return natsconn.Client(context.Background(), cfg, "itest-"+user, 2*time.Second)
}

// permClient is a user's connection whose permission violations are
// checked (natstest.Perms).
type permClient struct {
	*natstest.Perms
	nc *nats.Conn
	js jetstream.JetStream
}

func (c *permClient) publish(subject string, data []byte) func(context.Context) error {
	return func(context.Context) error { return c.nc.Publish(subject, data) }
}

func (c *permClient) request(subject string) func(context.Context) error {
	return func(ctx context.Context) error {
		_, err := c.nc.RequestWithContext(ctx, subject, nil)
		return err
	}
}

func (c *permClient) jsPublish(subject string) func(context.Context) error {
	return func(ctx context.Context) error {
		_, err := c.js.Publish(ctx, subject, []byte("forged"))
		return err
	}
}

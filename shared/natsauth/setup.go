// Package natsauth generates a cluster's NATS security: a CA and each NATS
// server's certificate (TLS for clients and routes), one nkey user per
// node, one for the operator's ccm CLI and one read-only monitoring user,
// each with the subject permissions of its role (perms.go), and the
// nats-server configuration of every node.
package natsauth

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/nats-io/nkeys"

	"github.com/convex-cluster-manager/ccm/shared/config"
)

// The users of a cluster besides its nodes (whose users are their IDs).
const (
	OperatorUser = "ccm"
	MonitorUser  = "monitor"
)

// Default ports and paths of the generated configuration.
const (
	DefaultClientPort  = 4222
	DefaultClusterPort = 6222
	DefaultHTTPPort    = 8222
	DefaultInstallDir  = "/etc/convex/nats"
	DefaultStoreDir    = "/var/lib/nats"
)

// Node is a cluster member and where its NATS server listens.
type Node struct {
	ID          string
	Host        string // the address other nodes and clients reach it at
	ClientPort  int
	ClusterPort int
}

// ParseNode reads ID=HOST[:CLIENT_PORT[:CLUSTER_PORT]].
func ParseNode(s string) (Node, error) {
	id, rest, ok := strings.Cut(s, "=")
	if !ok || rest == "" {
		return Node{}, fmt.Errorf("node %q: want ID=HOST[:CLIENT_PORT[:CLUSTER_PORT]]", s)
	}
	parts := strings.Split(rest, ":")
	if len(parts) > 3 || parts[0] == "" {
		return Node{}, fmt.Errorf("node %q: want ID=HOST[:CLIENT_PORT[:CLUSTER_PORT]] (an IPv6 host is not supported)", s)
	}
	n := Node{ID: id, Host: parts[0], ClientPort: DefaultClientPort, ClusterPort: DefaultClusterPort}
	for i, p := range parts[1:] {
		port, err := strconv.Atoi(p)
		if err != nil || port < 1 || port > 65535 {
			return Node{}, fmt.Errorf("node %q: port %q is not a number from 1 to 65535", s, p)
		}
		if i == 0 {
			n.ClientPort = port
		} else {
			n.ClusterPort = port
		}
	}
	return n, nil
}

// Setup describes a cluster's NATS servers and where their files go.
type Setup struct {
	Cluster    string
	Nodes      []Node
	InstallDir string // where each node's files are installed: the paths in the configurations
	StoreDir   string // JetStream's store directory on each node
	HTTPPort   int    // the servers' monitoring port, 0 for none
	// OperatorOnNodes also installs the operator's seed on every node and
	// makes it the ccm CLI's user there (nats.cli): `ccm promote` and the
	// like then work on any node, and a node's compromise is also the
	// operator's (the node's own user may already demote any leader).
	OperatorOnNodes bool
}

// Validate names the first bad value of s.
func (s Setup) Validate() error {
	if !config.ValidID(s.Cluster) {
		return fmt.Errorf("cluster ID %q: %s", s.Cluster, config.IDRule)
	}
	if len(s.Nodes) == 0 {
		return errors.New("no nodes: give each as ID=HOST")
	}
	seen := map[string]bool{}
	for _, n := range s.Nodes {
		switch {
		case !config.ValidID(n.ID):
			return fmt.Errorf("node ID %q: %s", n.ID, config.IDRule)
		case n.ID == OperatorUser || n.ID == MonitorUser || n.ID == "events" || n.ID == "wal":
			return fmt.Errorf("node ID %q is reserved (users %q and %q, subjects ccm.<cluster>.events and .wal)", n.ID, OperatorUser, MonitorUser)
		case seen[n.ID]:
			return fmt.Errorf("node ID %q given twice", n.ID)
		case n.Host == "":
			return fmt.Errorf("node %q has no host", n.ID)
		}
		seen[n.ID] = true
	}
	if !filepath.IsAbs(s.InstallDir) || !filepath.IsAbs(s.StoreDir) {
		return fmt.Errorf("install directory %q and store directory %q must be absolute paths", s.InstallDir, s.StoreDir)
	}
	return nil
}

// Files of each node under Setup.InstallDir (and of the output directory).
const (
	CAFile         = "ca.pem"
	caKeyFile      = "ca-key.pem"
	serverCertFile = "server.pem"
	serverKeyFile  = "server-key.pem"
	ServerConfFile = "nats.conf"
	EnvFile        = "ccm.env"
)

// ErrExists means the output directory of Generate exists.
var ErrExists = errors.New("output directory exists")

// NkeyFile is the file of a user's nkey seed.
func NkeyFile(user string) string { return user + ".nk" }

// Generate writes s's files into out, which must not exist yet (or force):
// out/ca.pem and out/ca-key.pem (keep the key offline: it signs servers);
// out/<node>/ — the node's nats.conf, server certificate and key, ca.pem,
// its nkey seed <node>.nk and ccm.env, the CCM_* settings of its
// cluster.json (for ccm init) — to install in InstallDir on that node; and
// out/users/ — the nkey seeds and settings (<user>.env) of the operator
// (ccm) and monitoring (monitor) users, and ca.pem.
func Generate(s Setup, out string, force bool) error {
	if err := s.Validate(); err != nil {
		return err
	}
	if _, err := os.Stat(out); err == nil && !force {
		return fmt.Errorf("%w: %s: it may hold a cluster's keys (use --force to replace them)", ErrExists, out)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	ca, caKey, err := newAuthority(s.Cluster)
	if err != nil {
		return fmt.Errorf("create the CA: %w", err)
	}
	w := writer{}
	w.file(filepath.Join(out, CAFile), ca.pem, 0o644)
	w.file(filepath.Join(out, caKeyFile), caKey, 0o600)

	users := map[string]string{} // user → public nkey
	seeds := map[string][]byte{}
	for _, u := range append(nodeIDs(s.Nodes), OperatorUser, MonitorUser) {
		kp, err := nkeys.CreateUser()
		if err != nil {
			return err
		}
		pub, _ := kp.PublicKey()
		seed, _ := kp.Seed()
		users[u], seeds[u] = pub, seed
	}
	var servers []string
	for _, n := range s.Nodes {
		servers = append(servers, fmt.Sprintf("tls://%s:%d", n.Host, n.ClientPort))
	}
	for i, n := range s.Nodes {
		dir := filepath.Join(out, n.ID)
		cert, key, err := ca.serverCert(n.ID, n.Host)
		if err != nil {
			return err
		}
		w.file(filepath.Join(dir, CAFile), ca.pem, 0o644)
		w.file(filepath.Join(dir, serverCertFile), cert, 0o644)
		w.file(filepath.Join(dir, serverKeyFile), key, 0o600)
		w.file(filepath.Join(dir, NkeyFile(n.ID)), seeds[n.ID], 0o600)
		if s.OperatorOnNodes {
			w.file(filepath.Join(dir, NkeyFile(OperatorUser)), seeds[OperatorUser], 0o600)
		}
		w.file(filepath.Join(dir, ServerConfFile), serverConf(s, n, users), 0o644)
		// The node's own server first: see natsconn.Daemon.
		own := append([]string{servers[i]}, append(append([]string{}, servers[:i]...), servers[i+1:]...)...)
		w.file(filepath.Join(dir, EnvFile), env(s, n.ID, n.ID, own), 0o644)
	}
	w.file(filepath.Join(out, "users", CAFile), ca.pem, 0o644)
	for _, u := range []string{OperatorUser, MonitorUser} {
		w.file(filepath.Join(out, "users", NkeyFile(u)), seeds[u], 0o600)
		w.file(filepath.Join(out, "users", u+".env"), env(s, "", u, servers), 0o644)
	}
	return w.err
}

func nodeIDs(nodes []Node) []string {
	var ids []string
	for _, n := range nodes {
		ids = append(ids, n.ID)
	}
	return ids
}

// env is the CCM_* settings of a client connecting as user: the node's
// for its cluster.json (ccm init reads them from the environment), or an
// operator's for the ccm CLI.
func env(s Setup, node, user string, servers []string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# NATS settings of %s in cluster %s, written by ccm nats-setup.\n", user, s.Cluster)
	fmt.Fprintf(&b, "CCM_CLUSTER_ID=%s\n", s.Cluster)
	if node != "" {
		fmt.Fprintf(&b, "CCM_NODE_ID=%s\n", node)
		fmt.Fprintf(&b, "CCM_NATS_REPLICAS=%d\n", min(len(s.Nodes), 5))
	}
	fmt.Fprintf(&b, "CCM_NATS_SERVERS=%s\n", strings.Join(servers, ","))
	fmt.Fprintf(&b, "CCM_NATS_NKEY_FILE=%s\n", filepath.Join(s.InstallDir, NkeyFile(user)))
	fmt.Fprintf(&b, "CCM_NATS_TLS_CA_FILE=%s\n", filepath.Join(s.InstallDir, CAFile))
	fmt.Fprintf(&b, "CCM_NATS_INBOX_PREFIX=%s\n", InboxPrefix(user))
	if node != "" && s.OperatorOnNodes {
		fmt.Fprintf(&b, "CCM_NATS_CLI_NKEY_FILE=%s\n", filepath.Join(s.InstallDir, NkeyFile(OperatorUser)))
		fmt.Fprintf(&b, "CCM_NATS_CLI_INBOX_PREFIX=%s\n", InboxPrefix(OperatorUser))
	}
	return b.Bytes()
}

// writer writes files, keeping the first error.
type writer struct{ err error }

func (w *writer) file(path string, data []byte, mode os.FileMode) {
	if w.err != nil {
		return
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		w.err = err
		return
	}
	if err := os.WriteFile(path, data, mode); err != nil {
		w.err = err
		return
	}
	w.err = os.Chmod(path, mode) // an existing file keeps its mode on WriteFile
}

// serverConf renders node n's nats-server configuration.
func serverConf(s Setup, n Node, users map[string]string) []byte {
	var b bytes.Buffer
	q := strconv.Quote
	path := func(f string) string { return q(filepath.Join(s.InstallDir, f)) }
	tls := func(indent string, verify bool) {
		fmt.Fprintf(&b, "%stls {\n", indent)
		fmt.Fprintf(&b, "%s  cert_file: %s\n%s  key_file: %s\n%s  ca_file: %s\n", indent, path(serverCertFile), indent, path(serverKeyFile), indent, path(CAFile))
		if verify {
			fmt.Fprintf(&b, "%s  verify: true\n", indent)
		}
		fmt.Fprintf(&b, "%s  timeout: 5\n%s}\n", indent, indent)
	}
	fmt.Fprintf(&b, "# NATS server of node %s of ccm cluster %s, written by ccm nats-setup:\n", n.ID, s.Cluster)
	b.WriteString("# TLS for clients and routes, one nkey user per node, operator and monitor,\n")
	b.WriteString("# each with the permissions of its role (docs/security.md). Regenerate, do not edit.\n")
	fmt.Fprintf(&b, "server_name: %s\n", q(n.ID))
	fmt.Fprintf(&b, "listen: %s\n", q(fmt.Sprintf("0.0.0.0:%d", n.ClientPort)))
	// Clients learn the other servers from this address, not from every
	// address of the host (whose certificate would not name them).
	fmt.Fprintf(&b, "client_advertise: %s\n", q(fmt.Sprintf("%s:%d", n.Host, n.ClientPort)))
	if s.HTTPPort != 0 {
		fmt.Fprintf(&b, "http: %d\n", s.HTTPPort)
	}
	b.WriteString("# Every append and lease write is fsynced before it is acknowledged.\n")
	fmt.Fprintf(&b, "jetstream { store_dir: %s, sync_interval: always }\n", q(s.StoreDir))
	tls("", false)
	if len(s.Nodes) > 1 {
		b.WriteString("cluster {\n")
		fmt.Fprintf(&b, "  name: %s\n", q("ccm-"+s.Cluster))
		fmt.Fprintf(&b, "  listen: %s\n", q(fmt.Sprintf("0.0.0.0:%d", n.ClusterPort)))
		fmt.Fprintf(&b, "  advertise: %s\n", q(fmt.Sprintf("%s:%d", n.Host, n.ClusterPort)))
		var routes []string
		for _, o := range s.Nodes {
			if o.ID != n.ID {
				routes = append(routes, q(fmt.Sprintf("nats-route://%s:%d", o.Host, o.ClusterPort)))
			}
		}
		fmt.Fprintf(&b, "  routes: [%s]\n", strings.Join(routes, ", "))
		tls("  ", true)
		b.WriteString("}\n")
	}
	b.WriteString("authorization {\n  users: [\n")
	user := func(name string, p Permissions, responder bool) {
		fmt.Fprintf(&b, "    # %s\n    { nkey: %s, permissions: {\n", name, q(users[name]))
		fmt.Fprintf(&b, "      publish: { allow: %s }\n", list(p.Publish))
		fmt.Fprintf(&b, "      subscribe: { allow: %s }\n", list(p.Subscribe))
		if responder {
			b.WriteString("      allow_responses: true\n")
		}
		b.WriteString("    } }\n")
	}
	for _, o := range s.Nodes {
		user(o.ID, NodePermissions(s.Cluster, o.ID), true)
	}
	user(OperatorUser, OperatorPermissions(s.Cluster), false)
	user(MonitorUser, MonitorPermissions(s.Cluster), false)
	b.WriteString("  ]\n}\n")
	return b.Bytes()
}

func list(subjects []string) string {
	q := make([]string, len(subjects))
	for i, s := range subjects {
		q[i] = strconv.Quote(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

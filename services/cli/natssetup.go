package cli

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/convex-cluster-manager/ccm/shared/natsauth"
)

// nodeList is a repeatable --node flag.
type nodeList []natsauth.Node

func (l *nodeList) String() string {
	var s []string
	for _, n := range *l {
		s = append(s, fmt.Sprintf("%s=%s:%d:%d", n.ID, n.Host, n.ClientPort, n.ClusterPort))
	}
	return strings.Join(s, ",")
}

func (l *nodeList) Set(v string) error {
	for _, part := range strings.Split(v, ",") {
		n, err := natsauth.ParseNode(strings.TrimSpace(part))
		if err != nil {
			return err
		}
		*l = append(*l, n)
	}
	return nil
}

func newNATSSetup(stdout, stderr io.Writer) *ffcli.Command {
	fs := newFlagSet("ccm nats-setup", stderr)
	cluster := fs.String("cluster-id", "", "cluster ID")
	var nodes nodeList
	fs.Var(&nodes, "node", "a node as ID=HOST[:CLIENT_PORT[:CLUSTER_PORT]] (repeat, or comma-separate); HOST is the address its NATS server is reached at")
	out := fs.String("out", "", "directory to write (must not exist)")
	installDir := fs.String("install-dir", natsauth.DefaultInstallDir, "where each node's files will be installed (the paths in the configurations)")
	storeDir := fs.String("store-dir", natsauth.DefaultStoreDir, "JetStream's store directory on each node")
	httpPort := fs.Int("http-port", natsauth.DefaultHTTPPort, "the NATS servers' monitoring port (0: none)")
	operatorOnNodes := fs.Bool("operator-on-nodes", false, "also install the operator's user on every node, as the ccm CLI's user there (nats.cli)")
	force := fs.Bool("force", false, "replace an existing output directory (new keys: every node must be given the new files)")
	return &ffcli.Command{
		Name:       "nats-setup",
		ShortUsage: "ccm nats-setup --cluster-id ID --node ID=HOST ... --out DIR",
		ShortHelp:  "generate the cluster's NATS users, permissions, TLS and server configurations",
		LongHelp: "Generates a CA and each NATS server's certificate (TLS for clients and routes), one\n" +
			"nkey user per node, one for the operator's ccm CLI (ccm) and a read-only monitoring user\n" +
			"(monitor), each with the subject permissions of its role, and each node's nats-server\n" +
			"configuration. Install DIR/<node>/* in --install-dir on that node, start nats-server\n" +
			"with its nats.conf, and give ccm init the node's settings: set -a; . ccm.env; ccm init ...\n" +
			"Keep DIR/ca-key.pem offline. See docs/security.md.",
		FlagSet: fs,
		Exec: func(ctx context.Context, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			if *out == "" {
				return fmt.Errorf("%w: --out is required", ErrUsage)
			}
			s := natsauth.Setup{Cluster: *cluster, Nodes: nodes, InstallDir: *installDir, StoreDir: *storeDir, HTTPPort: *httpPort, OperatorOnNodes: *operatorOnNodes}
			if err := s.Validate(); err != nil {
				return fmt.Errorf("%w: %w", ErrUsage, err)
			}
			if err := natsauth.Generate(s, *out, *force); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "wrote the NATS setup of cluster %s to %s:\n", s.Cluster, *out)
			for _, n := range s.Nodes {
				fmt.Fprintf(stdout, "  %s/  -> %s on %s (nats-server -c %s; ccm init with the settings of %s)\n",
					filepath.Join(*out, n.ID), s.InstallDir, n.ID, filepath.Join(s.InstallDir, natsauth.ServerConfFile), natsauth.EnvFile)
			}
			fmt.Fprintf(stdout, "  %s/  -> the operator (ccm.nk, ccm.env) and monitoring (monitor.nk, monitor.env) users, with ca.pem\n", filepath.Join(*out, "users"))
			fmt.Fprintf(stdout, "  %s  -> keep offline: it signs the servers' certificates\n", filepath.Join(*out, "ca-key.pem"))
			return nil
		},
	}
}

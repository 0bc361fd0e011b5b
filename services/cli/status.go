package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/convex-cluster-manager/ccm/shared/config"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// ClusterStatus is what `ccm status --json` prints.
type ClusterStatus struct {
	Cluster string      `json:"cluster"`
	Leader  *LeaderView `json:"leader"`
	Nodes   []NodeView  `json:"nodes"`
	// Paused is the maintenance mode (ccm pause), nil when not paused.
	Paused *schema.PauseRecord `json:"paused,omitempty"`
}

// LeaderView is the leader key as shown by status.
type LeaderView struct {
	Node             string    `json:"node"`
	Epoch            uint64    `json:"epoch"`
	Since            time.Time `json:"since"`
	LeaseRemainingMs int64     `json:"leaseRemainingMs"`
	HandoverTo       string    `json:"handoverTo,omitempty"`
	// Serving says its promotion finished (its backend served) and it is
	// not handing over.
	Serving bool `json:"serving"`
}

// NodeView is one node as shown by status.
type NodeView struct {
	ID         string      `json:"id"`
	Role       schema.Role `json:"role"`
	Epoch      uint64      `json:"epoch,omitempty"`
	Leader     string      `json:"leader,omitempty"`
	LastSeenMs int64       `json:"lastSeenMs"`
	Version    string      `json:"version"`
	// Replication, from the node's ccm-walapply (absent if it does not run).
	Apply *schema.ApplyStatus `json:"apply,omitempty"`
	// Storage replication, from the node's ccm-storage (absent if it does not run).
	Storage *schema.StorageStatus `json:"storage,omitempty"`
	// Backend, from the node's ccm-backend (absent if it does not run).
	Backend *schema.BackendStatus `json:"backend,omitempty"`
}

func newStatus(stdout, stderr io.Writer) *ffcli.Command {
	fs := newFlagSet("ccm status", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	watch := fs.Duration("watch", 0, "refresh at this interval (at least 250ms, e.g. 1s) until interrupted; with --json, one JSON document per line")
	flags := config.Bind(fs)
	return &ffcli.Command{
		Name:       "status",
		ShortUsage: "ccm status [--json] [--watch 1s] [--config FILE]",
		ShortHelp:  "show the leader, its lease, every node's role and replication position",
		FlagSet:    fs,
		Options:    config.ParseOptions(),
		LongHelp: "Exits 7 when no leader serves (the key is vacant, its holder is still promoting,\n" +
			"or it is handing over), after printing the status.",
		Exec: func(ctx context.Context, args []string) error {
			if *watch != 0 && *watch < minWatch {
				return fmt.Errorf("%w: --watch %s: at least %s", ErrUsage, *watch, minWatch)
			}
			return withClient(ctx, args, flags, func(c *client) error {
				return c.printStatus(ctx, stdout, *asJSON, *watch)
			})
		},
	}
}

// minWatch is the shortest --watch interval: each refresh reads every
// node's keys.
const minWatch = 250 * time.Millisecond

// printStatus prints the status once, or every watch interval until ctx
// ends. Printed once, it fails with ErrNoLeader when no leader serves.
func (c *client) printStatus(ctx context.Context, stdout io.Writer, asJSON bool, watch time.Duration) error {
	redraw := watch > 0 && !asJSON && isTerminal(stdout)
	for {
		st, err := c.status(ctx)
		if err != nil {
			return err
		}
		switch {
		case asJSON && watch > 0:
			b, _ := json.Marshal(st) // one document per line
			fmt.Fprintf(stdout, "%s\n", b)
		case asJSON:
			if err := printJSON(stdout, st); err != nil {
				return err
			}
		default:
			if redraw {
				fmt.Fprint(stdout, "\033[H\033[2J") // clear the terminal
			} else if watch > 0 {
				fmt.Fprintf(stdout, "--- %s\n", time.Now().Format(time.RFC3339))
			}
			printStatus(stdout, st)
		}
		if watch <= 0 {
			if st.Leader == nil || !st.Leader.Serving {
				return ErrNoLeader
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(watch):
		}
	}
}

func (c *client) status(ctx context.Context) (ClusterStatus, error) {
	now := time.Now()
	st := ClusterStatus{Cluster: c.cfg.ClusterID, Nodes: []NodeView{}}
	l, err := c.leader(ctx)
	if err != nil {
		return st, err
	}
	if l != nil {
		st.Leader = &LeaderView{Node: l.Node, Epoch: l.Epoch, Since: l.Since, HandoverTo: l.HandoverTo,
			LeaseRemainingMs: max(0, l.Written.Add(c.ttl).Sub(now).Milliseconds()), Serving: l.Ready && l.HandoverTo == ""}
	}
	if p, err := c.pause(ctx); err != nil {
		return st, err
	} else if p.Paused {
		st.Paused = &p
	}
	nodes, err := c.nodes(ctx)
	if err != nil {
		return st, err
	}
	for _, n := range nodes {
		v := NodeView{ID: n.Node, Role: n.Role, Epoch: n.Epoch, Leader: n.Leader,
			LastSeenMs: max(0, now.Sub(n.Written).Milliseconds()), Version: n.Version}
		if ent, err := c.kv.Get(ctx, schema.ApplyKey(n.Node)); err == nil {
			var a schema.ApplyStatus
			if json.Unmarshal(ent.Value(), &a) == nil {
				v.Apply = &a
			}
		}
		if ent, err := c.kv.Get(ctx, schema.StorageKey(n.Node)); err == nil {
			var s schema.StorageStatus
			if json.Unmarshal(ent.Value(), &s) == nil {
				v.Storage = &s
			}
		}
		if ent, err := c.kv.Get(ctx, schema.BackendKey(n.Node)); err == nil {
			var b schema.BackendStatus
			if json.Unmarshal(ent.Value(), &b) == nil {
				v.Backend = &b
			}
		}
		st.Nodes = append(st.Nodes, v)
	}
	missing, err := c.missing(ctx, nodes)
	if err != nil {
		return st, err
	}
	for _, m := range missing {
		st.Nodes = append(st.Nodes, NodeView{ID: m.Node, Role: RoleMissing, LastSeenMs: max(0, now.Sub(m.LastSeen).Milliseconds()), Version: m.Version})
	}
	return st, nil
}

// RoleMissing is the role ccm status gives a member whose status key
// expired: its elector is down (or cut off) and it has not left.
const RoleMissing schema.Role = "missing"

// missing returns the members (their records in the settings bucket) that
// have no live status key.
func (c *client) missing(ctx context.Context, live []nodeEntry) ([]schema.MemberRecord, error) {
	kv, err := c.settings(ctx)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("settings bucket: %w", err)
	}
	lister, err := kv.ListKeysFiltered(ctx, schema.MemberKeys)
	if err != nil {
		return nil, fmt.Errorf("list members: %w", err)
	}
	seen := map[string]bool{}
	for _, n := range live {
		seen[n.Node] = true
	}
	var out []schema.MemberRecord
	for key := range lister.Keys() {
		ent, err := kv.Get(ctx, key)
		if err != nil {
			continue // removed between list and get
		}
		var m schema.MemberRecord
		if json.Unmarshal(ent.Value(), &m) != nil || m.Node == "" || seen[m.Node] {
			continue
		}
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b schema.MemberRecord) int { return strings.Compare(a.Node, b.Node) })
	return out, nil
}

// printJSON writes v as indented JSON (the CLI's --json output).
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printStatus(w io.Writer, st ClusterStatus) {
	switch l := st.Leader; {
	case l == nil:
		fmt.Fprintf(w, "cluster %s: no leader\n\n", st.Cluster)
	case l.HandoverTo != "":
		fmt.Fprintf(w, "cluster %s: %s is handing over to %s (epoch %d)\n\n", st.Cluster, l.Node, l.HandoverTo, l.Epoch)
	case !l.Serving:
		fmt.Fprintf(w, "cluster %s: leader %s, epoch %d, PROMOTING (not serving yet), lease %.1fs remaining, since %s\n\n",
			st.Cluster, l.Node, l.Epoch, float64(l.LeaseRemainingMs)/1000, l.Since.Local().Format(time.RFC3339))
	default:
		fmt.Fprintf(w, "cluster %s: leader %s, epoch %d, lease %.1fs remaining, leading since %s\n\n",
			st.Cluster, l.Node, l.Epoch, float64(l.LeaseRemainingMs)/1000, l.Since.Local().Format(time.RFC3339))
	}
	if p := st.Paused; p != nil {
		fmt.Fprintf(w, "PAUSED (maintenance mode) since %s by %s: no automatic failover until ccm resume", p.At.Local().Format(time.RFC3339), p.By)
		if p.Reason != "" {
			fmt.Fprintf(w, " (%s)", p.Reason)
		}
		fmt.Fprint(w, "\n\n")
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tROLE\tEPOCH\tAPPLIED TXID\tLAG\tREPLICATION\tSTORAGE\tLAST SEEN\tVERSION")
	for _, n := range st.Nodes {
		if n.Role == RoleMissing {
			fmt.Fprintf(tw, "%s\tMISSING\t-\t-\t-\t-\t-\t%.0fs ago\t%s\n", n.ID, float64(n.LastSeenMs)/1000, n.Version)
			continue
		}
		txid, lag, repl := "-", "-", "-"
		if a := n.Apply; a != nil && n.Role != schema.RoleLeader {
			txid = fmt.Sprintf("%d/%d", a.Epoch, a.TXID)
			lag = fmt.Sprintf("%dms %d tx %s", a.LagMs, a.LagTXIDs, mib(a.LagBytes))
			if a.LagTXIDs < 0 || a.LagBytes < 0 {
				lag = "full copy in flight: " + a.FullCopy
			}
			repl = a.State
			switch {
			case a.State == schema.ApplyBehindRetention:
				repl = "BEHIND RETENTION (re-bootstrapping)"
			case a.State == schema.ApplyOpening:
				repl = "OPENING (retrying): " + a.Error
			case a.Error != "":
				repl = "FAILED: " + a.Error
			case !a.Complete && a.StreamSeq > 0:
				repl += " (no complete database yet)"
			}
		}
		if b := n.Backend; b != nil && b.Frozen {
			repl = fmt.Sprintf("BACKEND FROZEN %.1fs: %s", float64(b.FrozenMs)/1000, b.FrozenReason)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%.1fs ago\t%s\n", n.ID, n.Role, n.Epoch, txid, lag, repl,
			storageCell(n.Storage), float64(n.LastSeenMs)/1000, n.Version)
	}
	if len(st.Nodes) == 0 {
		fmt.Fprintln(tw, "(no live nodes)")
	}
	tw.Flush()
}

// storageCell summarises a node's storage replication in one cell.
func storageCell(s *schema.StorageStatus) string {
	switch {
	case s == nil:
		return "-"
	case s.State == schema.StorageFailed:
		return fmt.Sprintf("FAILED (%d files): %s", s.Failed, s.Error)
	case s.State == schema.StorageSyncing:
		return fmt.Sprintf("syncing %d/%d files", s.Files, s.ManifestFiles)
	case s.State == schema.StorageIdle || s.State == schema.StorageReleased:
		return s.State
	default:
		return fmt.Sprintf("%s %d files %s", s.State, s.Files, mib(s.Bytes))
	}
}

package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/peterbourgon/ff/v3/ffcli"
	"github.com/superfly/ltx"
	"golang.org/x/sync/errgroup"

	"github.com/convex-cluster-manager/ccm/shared/config"
	"github.com/convex-cluster-manager/ccm/shared/replica"
	"github.com/convex-cluster-manager/ccm/shared/schema"
	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

// ErrDiverged selects ExitDiverged: a node's database is not what the
// WAL stream says it should be.
var ErrDiverged = errors.New("diverged")

// Verdicts of ccm verify.
const (
	Consistent = "consistent" // at the leader's verified position, or past it
	Behind     = "behind"     // consistent at an earlier position of the stream
	Diverged   = "DIVERGED"
	Unverified = "unverified" // no answer, or nothing to compare with (Detail says why)
)

// Verification is what `ccm verify --json` prints.
type Verification struct {
	Cluster string       `json:"cluster"`
	Leader  string       `json:"leader,omitempty"`
	Nodes   []NodeVerify `json:"nodes"`
}

// NodeVerify is one node's verdict.
type NodeVerify struct {
	Node    string                `json:"node"`
	Role    string                `json:"role"` // leader or passive
	Verdict string                `json:"verdict"`
	Detail  string                `json:"detail,omitempty"`
	Checked *replica.Verification `json:"checked,omitempty"`
}

func newVerify(stdout, stderr io.Writer) *ffcli.Command {
	fs := newFlagSet("ccm verify", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	flags := config.Bind(fs)
	return &ffcli.Command{
		Name:       "verify",
		ShortUsage: "ccm verify [--json] [--config FILE]",
		ShortHelp:  "read every node's database whole and check it against the WAL stream",
		LongHelp: `The leader's database (read between two flushes, so it must not be written meanwhile)
is compared page by page with what it shipped; every passive's shadow with what it applied,
and that with the checksum the WAL stream records at its position. Each node is consistent,
behind (consistent at an earlier position), DIVERGED (with the first differing page) or
unverified (with the reason). Exit code 6 if a node diverged, 1 if one could not be verified.`,
		FlagSet: fs,
		Options: config.ParseOptions(),
		Exec: func(ctx context.Context, args []string) error {
			return withClient(ctx, args, flags, func(c *client) error {
				v, err := c.verify(ctx)
				if err != nil {
					return err
				}
				if *asJSON {
					if err := printJSON(stdout, v); err != nil {
						return err
					}
				} else {
					printVerification(stdout, v)
				}
				return v.Err()
			})
		},
	}
}

// Err is ErrDiverged if a node diverged, an error if one could not be
// verified, else nil.
func (v Verification) Err() error {
	var unverified []string
	for _, n := range v.Nodes {
		switch n.Verdict {
		case Diverged:
			return fmt.Errorf("%w: node %s: %s", ErrDiverged, n.Node, n.Detail)
		case Unverified:
			unverified = append(unverified, n.Node)
		}
	}
	if len(unverified) > 0 {
		return fmt.Errorf("not verified: %v", unverified)
	}
	return nil
}

// verify asks the leader's ccm-walship and every other node's
// ccm-walapply to check their database, then checks each position
// against the WAL stream.
func (c *client) verify(ctx context.Context) (Verification, error) {
	l, err := c.leader(ctx)
	if err != nil {
		return Verification{}, err
	}
	nodes, err := c.nodes(ctx)
	if err != nil {
		return Verification{}, err
	}
	v := Verification{Cluster: c.cfg.ClusterID, Nodes: make([]NodeVerify, len(nodes))}
	if l != nil {
		v.Leader = l.Node
	}
	var g errgroup.Group
	for i, n := range nodes {
		nv := &v.Nodes[i]
		nv.Node, nv.Role = n.Node, "passive"
		service := schema.ServiceWalapply
		if n.Node == v.Leader {
			nv.Role, service = "leader", schema.ServiceWalship
		}
		g.Go(func() error {
			var got replica.Verification
			if err := c.request(ctx, n.Node, service, schema.VerbVerify, nil, &got); err != nil {
				nv.Verdict, nv.Detail = Unverified, err.Error()
				if strings.Contains(err.Error(), replica.ErrDiverged.Error()) {
					nv.Verdict = Diverged // found earlier (its ccm-walapply refuses to open the shadow)
				}
				return nil
			}
			nv.Checked = &got
			return nil
		})
	}
	g.Wait()
	js, err := jetstream.New(c.nc)
	if err != nil {
		return v, err
	}
	stream, err := walstream.Lookup(ctx, js, c.cfg.ClusterID)
	if err != nil {
		return v, fmt.Errorf("WAL stream: %w", err)
	}
	var leader *replica.Verification
	for _, n := range v.Nodes {
		if n.Role == "leader" && n.Checked != nil && n.Checked.Consistent() {
			leader = n.Checked
		}
	}
	for i := range v.Nodes {
		judge(ctx, stream, leader, &v.Nodes[i])
	}
	return v, nil
}

// judge gives n its verdict: its database against its position, its
// position against the stream's record, and against the leader's.
func judge(ctx context.Context, stream jetstream.Stream, leader *replica.Verification, n *NodeVerify) {
	got := n.Checked
	if got == nil {
		return // unverified: the request failed
	}
	p := got.Position
	if !got.Consistent() {
		n.Verdict, n.Detail = Diverged, fmt.Sprintf("at epoch %d TXID %d: %s", p.Epoch, p.TXID, got.Check)
		return
	}
	if p.TXID == 0 {
		n.Verdict, n.Detail = Unverified, "the shadow is empty: nothing applied yet"
		return
	}
	recorded, agedOut, note := streamChecksum(ctx, stream, p)
	if note == "" && recorded != p.Checksum {
		n.Verdict, n.Detail = Diverged, fmt.Sprintf("at epoch %d TXID %d (sequence %d) the WAL stream records checksum %s, the node %s", p.Epoch, p.TXID, p.Seq, recorded, p.Checksum)
		return
	}
	if leader != nil && leader.Position.Epoch == p.Epoch && leader.Position.TXID == p.TXID && leader.Actual != got.Actual {
		n.Verdict, n.Detail = Diverged, fmt.Sprintf("at epoch %d TXID %d the leader's checksum is %s, the node's %s", p.Epoch, p.TXID, leader.Actual, got.Actual)
		return
	}
	if note != "" && !agedOut {
		n.Verdict, n.Detail = Unverified, note
		return
	}
	n.Verdict = Consistent
	switch {
	case leader != nil && (p.Epoch < leader.Position.Epoch || p.Epoch == leader.Position.Epoch && p.TXID < leader.Position.TXID):
		n.Verdict = Behind
		n.Detail = fmt.Sprintf("at epoch %d TXID %d, the leader at epoch %d TXID %d", p.Epoch, p.TXID, leader.Position.Epoch, leader.Position.TXID)
	case note != "":
		n.Detail = note
	}
}

// streamChecksum returns the database checksum the WAL stream records at
// position p (the message at p.Seq: the last chunk of the file that
// reached p.TXID, or the marker of an epoch that continued from it), or a
// note saying why it cannot tell (agedOut: the stream no longer holds it).
func streamChecksum(ctx context.Context, stream jetstream.Stream, p replica.Position) (sum ltx.Checksum, agedOut bool, note string) {
	msg, err := stream.GetMsg(ctx, p.Seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, true, fmt.Sprintf("the WAL stream no longer holds sequence %d: checked against the node's own record only", p.Seq)
	}
	if err != nil {
		return 0, false, fmt.Sprintf("read sequence %d of the WAL stream: %v", p.Seq, err)
	}
	m, err := walstream.ParseMeta(msg.Header)
	switch {
	case err != nil:
		return 0, false, fmt.Sprintf("sequence %d of the WAL stream: %v", p.Seq, err)
	case m.Kind == walstream.KindLTX && m.Last && m.MaxTXID == p.TXID:
		return m.Post, false, ""
	case m.Kind == walstream.KindMarker && m.Base != nil && m.Base.TXID == p.TXID:
		return m.Base.Checksum, false, ""
	}
	return 0, false, fmt.Sprintf("sequence %d of the WAL stream is not the end of TXID %d", p.Seq, p.TXID)
}

func printVerification(w io.Writer, v Verification) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "cluster %s\n", v.Cluster)
	fmt.Fprintln(tw, "NODE\tROLE\tVERDICT\tEPOCH\tTXID\tPAGES\tCHECKSUM\tTOOK\tDETAIL")
	for _, n := range v.Nodes {
		if c := n.Checked; c != nil {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\t%dms\t%s\n", n.Node, n.Role, n.Verdict, c.Position.Epoch, c.Position.TXID, c.Pages, c.Actual, c.ElapsedMs, n.Detail)
		} else {
			fmt.Fprintf(tw, "%s\t%s\t%s\t-\t-\t-\t-\t-\t%s\n", n.Node, n.Role, n.Verdict, n.Detail)
		}
	}
	tw.Flush()
}

//go:build integration

package itest

import (
	"cmp"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/itest/history"
	"github.com/convex-cluster-manager/ccm/services/cli"
	"github.com/convex-cluster-manager/ccm/shared/config"
)

// chaosTTL is the lease TTL of the campaign's cluster; faults that
// depose a leader last longer.
const chaosTTL = 3 * time.Second

// lossWindow bounds how long before a deposed leader's last
// acknowledgement a write it acknowledged may be lost in the failover:
// wal.maxUnshippedMs (its backend is frozen when changes wait longer to
// be shipped), plus a capture interval, the guard's tick and the
// clients' round trips.
var lossWindow = time.Duration(config.Default().WAL.MaxUnshippedMs)*time.Millisecond + 500*time.Millisecond

// TestChaos runs CHAOS_RUNS runs (default 2, in make test; make chaos: 50)
// on one three-node cluster,
// each a random schedule of faults drawn from CHAOS_SEED (default: the
// time; run i uses seed+i) while clients on the host add values through
// the VIP and read them back. After each run, healed and caught up, the
// history must be linearizable (values lost in a failover apart, each
// acknowledged less than lossWindow before the deposed leader's last
// acknowledgement), no node may have
// answered outside its term, at no sample two nodes held the VIP or ran
// the backend, ccm verify says consistent for every node and every node
// holds the same storage files. The per-fault-kind report (docs/chaos.md)
// is printed as CHAOS lines.
func TestChaos(t *testing.T) {
	// make test runs a short campaign (CHAOS_RUNS unset); make chaos, 50.
	runs, err := strconv.Atoi(cmp.Or(os.Getenv("CHAOS_RUNS"), "2"))
	require.NoError(t, err, "CHAOS_RUNS")
	seed, err := strconv.ParseUint(cmp.Or(os.Getenv("CHAOS_SEED"), strconv.FormatInt(time.Now().UnixNano()%1e9, 10)), 10, 64)
	require.NoError(t, err, "CHAOS_SEED")
	// Snapshots every 2 minutes, not hourly: a node that must re-bootstrap
	// (a deposed leader whose database holds an unshipped tail) replays
	// the stream from the newest snapshot, which would otherwise be the
	// campaign's first (2.5 min of replay once, past the caught-up wait).
	c := StartCluster(t, ClusterOptions{TTLMs: int(chaosTTL / time.Millisecond), HeartbeatMs: 1000, MarginMs: 500, DataMiB: chaosDataMiB, SnapshotMs: 120000})
	began := time.Now()
	rep := newChaosReport()
	for i := range runs {
		s := seed + uint64(i)
		if !t.Run(fmt.Sprintf("seed=%d", s), func(t *testing.T) { c.chaosRun(t, s, began, rep) }) {
			rep.failed = append(rep.failed, s)
			break // the cluster may be left broken: replay with CHAOS_SEED
		}
	}
	rep.print(seed, runs)
}

// fault is one scheduled fault: do applies it and heals it before it
// returns.
type fault struct {
	kind  string
	desc  string
	at    time.Time // when it began
	do    func(t *testing.T)
	check func(t *testing.T) []string // violations found after the run, if the fault has its own check
}

// faultKinds are the kinds the schedule draws from, with their weights.
var faultKinds = []struct {
	kind   string
	weight int
}{
	{"kill -9 daemon", 4}, {"SIGSTOP daemon", 2}, {"pause node", 2}, {"partition node", 2},
	{"cut link", 1}, {"stop NATS server", 1}, {"promote", 2}, {"demote", 1}, {"full disk", 2},
	{"large transaction in a switchover", 1},
}

// chaosDataMiB is the size of each node's data file system (a tmpfs, so
// that the full-disk fault can fill it): room for the database, its WAL
// and its shadow after a large transaction.
const chaosDataMiB = 1024

var daemons = []string{"ccm-elector", "ccm-walship", "ccm-walapply", "ccm-snapshot", "ccm-vip", "ccm-backend", "ccm-storage"}

// drawFault draws one fault against the cluster as it is now.
func (c *Cluster) drawFault(t *testing.T, rng *rand.Rand) *fault {
	total := 0
	for _, k := range faultKinds {
		total += k.weight
	}
	pick := rng.IntN(total)
	kind := faultKinds[0].kind
	for _, k := range faultKinds {
		if pick < k.weight {
			kind = k.kind
			break
		}
		pick -= k.weight
	}
	l := c.WaitAnyServing(t, 60*time.Second)
	n := c.Nodes[rng.IntN(len(c.Nodes))]
	others := c.others(n)
	other := others[rng.IntN(len(others))]
	f := &fault{kind: kind}
	hold := chaosTTL + time.Duration(1000+rng.IntN(2000))*time.Millisecond
	switch kind {
	case "kill -9 daemon":
		d := daemons[rng.IntN(len(daemons))]
		f.desc = fmt.Sprintf("kill -9 %s on %s", d, n.Name)
		f.do = func(t *testing.T) { n.Exec(t, "pkill", "-9", "-x", d) }
	case "SIGSTOP daemon":
		d := daemons[rng.IntN(len(daemons))]
		f.desc = fmt.Sprintf("SIGSTOP %s on %s for %s", d, n.Name, hold)
		f.do = func(t *testing.T) {
			n.Exec(t, "pkill", "-STOP", "-x", d)
			time.Sleep(hold)
			n.Exec(t, "pkill", "-CONT", "-x", d)
		}
	case "pause node":
		f.desc = fmt.Sprintf("docker pause %s for %s", n.Name, hold)
		f.do = func(t *testing.T) {
			n.Docker(t, "pause")
			time.Sleep(hold)
			n.Docker(t, "unpause")
		}
	case "partition node":
		f.desc = fmt.Sprintf("partition %s for %s", n.Name, 2*hold)
		f.do = func(t *testing.T) {
			n.Cut(t, c.Net)
			time.Sleep(2 * hold)
			n.Heal(t, c.Net)
		}
	case "cut link":
		f.desc = fmt.Sprintf("cut %s <-> %s for %s", n.Name, other.Name, 2*hold)
		f.do = func(t *testing.T) {
			n.Must(t, "ip", "route", "add", "blackhole", other.IP+"/32")
			other.Must(t, "ip", "route", "add", "blackhole", n.IP+"/32")
			time.Sleep(2 * hold)
			n.Must(t, "ip", "route", "del", "blackhole", other.IP+"/32")
			other.Must(t, "ip", "route", "del", "blackhole", n.IP+"/32")
		}
	case "stop NATS server":
		f.desc = fmt.Sprintf("stop nats-server on %s for %s", n.Name, hold)
		f.do = func(t *testing.T) {
			n.Must(t, "systemctl", "stop", "nats-server")
			time.Sleep(hold)
			n.Must(t, "systemctl", "start", "nats-server")
		}
	case "full disk":
		// A passive's data file system (its replica and data paths) full:
		// applying, checkpoints and storage mirroring fail meanwhile.
		p := c.others(l)[rng.IntN(2)]
		f.desc = fmt.Sprintf("full disk on %s for %s", p.Name, 2*hold)
		f.do = func(t *testing.T) {
			p.Must(t, "sh", "-c", "dd if=/dev/zero of=/var/lib/convex/ballast bs=64k 2>/dev/null; df -h /var/lib/convex | tail -1")
			time.Sleep(2 * hold)
			p.Must(t, "rm", "-f", "/var/lib/convex/ballast")
		}
	case "large transaction in a switchover":
		// One transaction of hundreds of MiB committed on the leader
		// (beside its backend, as a migration would), then, while it is
		// still being shipped, storage uploads and a switchover.
		target := c.others(l)[rng.IntN(2)]
		mib := 128 + 32*rng.IntN(4)
		f.desc = fmt.Sprintf("%d MiB transaction on %s, uploads and ccm promote --node %s", mib, l.Name, target.Name)
		var sizes [4]int
		for i := range sizes {
			sizes[i] = (1 + rng.IntN(8)) << 20
		}
		uploaded := map[string]string{} // path: SHA-256, of the uploads acknowledged
		f.do = func(t *testing.T) {
			l.Must(t, "sqlite3", "-cmd", ".timeout 60000", "/var/lib/convex/data/db.sqlite3", fmt.Sprintf(`CREATE TABLE IF NOT EXISTS chaos_big (b BLOB);
DELETE FROM chaos_big;
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < %d) INSERT INTO chaos_big SELECT randomblob(65536) FROM c;`, mib*16))
			done := make(chan struct{})
			go func() {
				defer close(done)
				for i, size := range sizes {
					path := fmt.Sprintf("chaos/big-%s-%d", f.at.Format("150405.000"), i)
					code, out := c.Client.Exec(t, "sh", "-c", fmt.Sprintf("head -c %d /dev/urandom > /tmp/up-%d && curl -sf -m 10 -XPOST --data-binary @/tmp/up-%d 'http://%s:3210/storage?f=%s' >/dev/null && sha256sum /tmp/up-%d", size, i, i, c.VIP, path, i))
					if code == 0 {
						uploaded[path] = strings.Fields(out)[0]
					}
				}
			}()
			if code, out := target.Exec(t, "ccm", "promote", "--node", target.Name); code != 0 {
				t.Logf("%s: exit %d: %s", f.desc, code, strings.TrimSpace(out))
			}
			<-done
		}
		f.check = func(t *testing.T) []string {
			var bad []string
			for path, want := range uploaded {
				code, out := c.Client.Exec(t, "sh", "-c", fmt.Sprintf("curl -sf -m 10 'http://%s:3210/storage?f=%s' | sha256sum", c.VIP, path))
				if got := strings.Fields(out + " -")[0]; code != 0 || got != want {
					bad = append(bad, fmt.Sprintf("upload %s, acknowledged during the switchover: served %s (exit %d), uploaded %s", path, got, code, want))
				}
			}
			return bad
		}
	case "promote":
		target := c.others(l)[rng.IntN(2)]
		f.desc = fmt.Sprintf("ccm promote --node %s", target.Name)
		f.do = func(t *testing.T) {
			if code, out := target.Exec(t, "ccm", "promote", "--node", target.Name); code != 0 {
				t.Logf("%s: exit %d: %s", f.desc, code, strings.TrimSpace(out))
			}
		}
	case "demote":
		f.desc = fmt.Sprintf("ccm demote (leader %s)", l.Name)
		f.do = func(t *testing.T) {
			if code, out := n.Exec(t, "ccm", "demote"); code != 0 {
				t.Logf("%s: exit %d: %s", f.desc, code, strings.TrimSpace(out))
			}
		}
	}
	return f
}

// chaosRun runs one schedule and checks it.
func (c *Cluster) chaosRun(t *testing.T, seed uint64, began time.Time, rep *chaosReport) {
	rng := rand.New(rand.NewPCG(seed, seed))
	c.WaitAnyServing(t, 90*time.Second)
	c.StartChecker(t)
	clients := c.StartClients(t, fmt.Sprintf("s%d", seed))
	time.Sleep(2 * time.Second)
	var faults []*fault
	for range 2 + rng.IntN(2) {
		f := c.drawFault(t, rng)
		f.at = time.Now()
		t.Logf("fault: %s", f.desc)
		f.do(t)
		faults = append(faults, f)
		c.WaitAnyServing(t, 120*time.Second)
		time.Sleep(time.Duration(1000+rng.IntN(2000)) * time.Millisecond)
	}
	c.WaitNATSRoutes(t, 90*time.Second)
	c.WaitPassivesCaughtUp(t, 120*time.Second)
	ops := clients.Stop(t)

	// Checks. Every failure is reported, then the run fails.
	var violations []string
	final := map[string]bool{}
	for _, v := range strings.Split(c.Client.Must(t, "curl", "-sf", "-m", "10", "http://"+c.VIP+":3210/values"), "\n") {
		final[strings.TrimSpace(v)] = true
	}
	lost := history.Lost(ops, final)
	// A failover may lose the tail of the deposed leader's term: writes
	// acknowledged at most lossWindow before its last acknowledgement.
	terms := c.ElectorTerms(t, began.Add(-time.Minute))
	ages, beyond := history.LostAges(ops, lost, terms, lossWindow)
	for _, o := range beyond {
		violations = append(violations, fmt.Sprintf("lost, acknowledged more than %s before its node's last acknowledgement in its term: %s", lossWindow, o))
	}
	skip := map[string]bool{}
	for _, o := range lost {
		skip[o.Value] = true
	}
	anomalies, err := history.Linearizable(ops, skip, time.Minute)
	if err != nil {
		violations = append(violations, err.Error())
	}
	for _, a := range anomalies {
		violations = append(violations, fmt.Sprintf("not linearizable: value %s: %v", a.Value, a.Ops))
	}
	for _, o := range history.OutOfTerm(ops, terms) {
		violations = append(violations, fmt.Sprintf("answered outside its term: %s", o))
	}
	if r := c.CheckerReport(t); r.VIPs > 1 || r.Backends > 1 {
		violations = append(violations, fmt.Sprintf("%d VIP holders and %d backends at once (longest %s, %s)", r.VIPs, r.Backends, r.VIPOverlap, r.BackendOverlap))
	}
	l := c.WaitAnyServing(t, 60*time.Second)
	code, out := l.Exec(t, "ccm", "verify")
	if code != 0 {
		violations = append(violations, fmt.Sprintf("ccm verify: exit %d:\n%s\n%s", code, out, c.compareRows(t, l)))
	}
	// The mirrors follow the leader's tree asynchronously: equal within a minute.
	var diff string
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		if diff = c.StorageDiff(t, l); diff == "" || time.Now().After(deadline) {
			break
		}
	}
	if diff != "" {
		violations = append(violations, "storage differs: "+diff)
	}
	// Every committed upload row names a file the leader serves as uploaded.
	missing := strings.TrimSpace(c.Client.Must(t, "curl", "-sf", "-m", "30", "http://"+c.VIP+":3210/uploads/missing"))
	if first, _, _ := strings.Cut(missing, "\n"); !strings.HasSuffix(first, " 0 missing") {
		violations = append(violations, "upload rows without their file: "+missing)
	}
	for _, f := range faults {
		if f.check != nil {
			violations = append(violations, f.check(t)...)
		}
	}
	unavail := longestGap(ops)
	var descs []string
	for _, f := range faults {
		descs = append(descs, f.desc)
	}
	fmt.Printf("CHAOS seed=%d faults=[%s] ops=%d acked=%d lost=%d ages=%v unavailable=%s violations=%d\n",
		seed, strings.Join(descs, "; "), len(ops), len(history.Acked(ops)), len(lost), ages, unavail.Round(time.Millisecond), len(violations))
	rep.add(faults, len(ops), len(lost), ages, unavail, len(violations))
	if len(violations) > 0 {
		var b strings.Builder
		for _, tm := range terms {
			if tm.End.IsZero() || tm.End.After(faults[0].at.Add(-time.Minute)) {
				fmt.Fprintf(&b, "  %s epoch %d %s - %s\n", tm.Node, tm.Epoch, tm.Start.Format("15:04:05.000"), tm.End.Format("15:04:05.000"))
			}
		}
		t.Logf("terms:\n%s", b.String())
	}
	for _, v := range violations[:min(len(violations), 50)] {
		t.Error(v)
	}
	if len(violations) > 50 {
		t.Errorf("and %d more violations", len(violations)-50)
	}
}

// longestGap is the longest time without an acknowledged add.
func longestGap(ops []history.Op) time.Duration {
	var acks []time.Time
	for _, o := range history.Acked(ops) {
		acks = append(acks, o.Return)
	}
	slices.SortFunc(acks, func(a, b time.Time) int { return a.Compare(b) })
	var gap time.Duration
	for i := 1; i < len(acks); i++ {
		gap = max(gap, acks[i].Sub(acks[i-1]))
	}
	return gap
}

// StorageDiff compares the storage files of every node (the leader's
// data path, the passives' mirrors) and describes the first difference.
func (c *Cluster) StorageDiff(t *testing.T, leader *Node) string {
	t.Helper()
	digest := func(n *Node) string {
		dir := "/var/lib/convex/replica/storage"
		if n == leader {
			dir = "/var/lib/convex/data/storage"
		}
		return n.Must(t, "sh", "-c", "cd "+dir+" && find . -type f ! -name '.ccm-*' | sort | xargs -r sha256sum")
	}
	want := digest(leader)
	for _, n := range c.others(leader) {
		if got := digest(n); got != want {
			return fmt.Sprintf("%s holds %d files, the leader %s %d", n.Name, strings.Count(got, "\n"), leader.Name, strings.Count(want, "\n"))
		}
	}
	return ""
}

// chaosReport sums the runs per fault kind.
type chaosReport struct {
	kinds  map[string]*kindStats
	failed []uint64
}

type kindStats struct {
	runs, ops, lost, violations int
	ages                        []time.Duration
	unavail                     time.Duration
}

func newChaosReport() *chaosReport { return &chaosReport{kinds: map[string]*kindStats{}} }

// add counts a run under every kind of fault it had.
func (r *chaosReport) add(faults []*fault, ops, lost int, ages []time.Duration, unavail time.Duration, violations int) {
	seen := map[string]bool{}
	for _, f := range faults {
		if seen[f.kind] {
			continue
		}
		seen[f.kind] = true
		k := r.kinds[f.kind]
		if k == nil {
			k = &kindStats{}
			r.kinds[f.kind] = k
		}
		k.runs++
		k.ops += ops
		k.lost += lost
		k.violations += violations
		k.ages = append(k.ages, ages...)
		k.unavail = max(k.unavail, unavail)
	}
}

func (r *chaosReport) print(seed uint64, runs int) {
	var b strings.Builder
	fmt.Fprintf(&b, "CHAOS campaign seed=%d runs=%d failed seeds=%v\n", seed, runs, r.failed)
	fmt.Fprintln(&b, "CHAOS | fault kind | runs | operations | violations | lost writes (ages) | longest unavailability |")
	fmt.Fprintln(&b, "CHAOS |---|---|---|---|---|---|")
	var kinds []string
	for k := range r.kinds {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	for _, name := range kinds {
		k := r.kinds[name]
		var ages []string
		for _, a := range k.ages {
			ages = append(ages, a.Round(time.Millisecond).String())
		}
		fmt.Fprintf(&b, "CHAOS | %s | %d | %d | %d | %d (%s) | %s |\n", name, k.runs, k.ops, k.violations, k.lost, strings.Join(ages, ", "), k.unavail.Round(time.Millisecond))
	}
	fmt.Print(b.String())
	if dir := os.Getenv("CHAOS_REPORT_DIR"); dir != "" {
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("chaos-%d.txt", seed)), []byte(b.String()), 0o644)
	}
}

// compareRows describes how the leader's database differs from each
// passive's shadow: rows of every table in one and not the other, and
// what the first differing page holds (dbstat): what a DIVERGED verdict is
// made of.
func (c *Cluster) compareRows(t *testing.T, leader *Node) string {
	t.Helper()
	var b strings.Builder
	code, out := leader.Exec(t, "sh", "-c", "ccm verify --json 2>/dev/null")
	var v cli.Verification
	json.Unmarshal([]byte(out), &v)
	page := uint32(0)
	for _, n := range v.Nodes {
		if n.Node == leader.Name && n.Checked != nil {
			page = n.Checked.FirstBad
		}
	}
	fmt.Fprintf(&b, "ccm verify --json: exit %d, the leader's first differing page %d\n", code, page)
	// A copy (with its WAL, for the leader's: nothing writes now) read by
	// sqlite3, which leaves the original alone.
	dump := func(n *Node, db string) []string {
		q := fmt.Sprintf(`SELECT 'page %d: ' || name || ' ' || pagetype FROM dbstat WHERE pageno = %d; SELECT 'writes ' || id || ' ' || v || ' ' || at FROM writes; SELECT 'uploads ' || id || ' ' || path || ' ' || sha256 FROM uploads; SELECT 'master ' || type || ' ' || name || ' ' || rootpage FROM sqlite_master;`, page, page)
		out := n.Must(t, "sh", "-c", `rm -f /tmp/rows.db*; cp `+db+` /tmp/rows.db; if [ -f `+db+`-wal ]; then cp `+db+`-wal /tmp/rows.db-wal; fi; sqlite3 /tmp/rows.db "`+q+`"`)
		return strings.Split(strings.TrimSpace(out), "\n")
	}
	lr := dump(leader, "/var/lib/convex/data/db.sqlite3")
	for _, l := range lr {
		if strings.HasPrefix(l, "page ") || strings.HasPrefix(l, "master ") {
			fmt.Fprintf(&b, "leader %s: %s\n", leader.Name, l)
		}
	}
	for _, n := range c.others(leader) {
		pr := dump(n, "/var/lib/convex/replica/db.sqlite3")
		in := func(s []string) map[string]bool {
			m := map[string]bool{}
			for _, x := range s {
				m[x] = true
			}
			return m
		}
		lm, pm := in(lr), in(pr)
		var onlyL, onlyP []string
		for _, r := range lr {
			if !pm[r] {
				onlyL = append(onlyL, r)
			}
		}
		for _, r := range pr {
			if !lm[r] {
				onlyP = append(onlyP, r)
			}
		}
		fmt.Fprintf(&b, "%s: %d lines, the leader %d; only on the leader: %d %v; only on %s: %d %v\n",
			n.Name, len(pr), len(lr), len(onlyL), onlyL[:min(len(onlyL), 10)], n.Name, len(onlyP), onlyP[:min(len(onlyP), 10)])
	}
	return b.String()
}

//go:build integration

package itest

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/convex-cluster-manager/ccm/services/cli"
	"github.com/convex-cluster-manager/ccm/services/elector"
	"github.com/convex-cluster-manager/ccm/shared/config"
	"github.com/convex-cluster-manager/ccm/shared/natsauth"
	"github.com/convex-cluster-manager/ccm/shared/schema"
	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

// Cluster is three node containers, each a NATS cluster member with all
// ccm units and the stand-in backend, and a client container, on one
// network with a subnet the test picked.
type Cluster struct {
	Net    Net
	Nodes  []*Node
	Client *Node
	VIP    string
	// Front is where the writer and Lost reach the backend: the VIP, or
	// a load balancer in the client container.
	Front string
	Name  string
	syncN int // settle markers written (bench)
	// Every write acknowledged so far and not lost in its own failover:
	// it must be in the database at every later check.
	acked   map[string]time.Time
	writers int
	natsDir string // the generated NATS security, on the host (security.go)
}

// ClusterOptions tune StartCluster.
type ClusterOptions struct {
	TTLMs, HeartbeatMs, MarginMs int
	// DataMiB, if set, gives each node's /var/lib/convex a tmpfs of
	// that size (NodeOptions.DataMiB).
	DataMiB int
	// SnapshotMs, if set, is wal.snapshotIntervalMs (default: hourly).
	SnapshotMs int
}

// StartCluster brings up a three-node cluster: n1 with `ccm init`, n2 and
// n3 with `ccm join`, and waits until n1 serves on the VIP with two
// caught-up passives. NATS runs as `ccm nats-setup` generates it: TLS,
// a user per node with its permissions; the ccm CLI on the nodes acts as
// the operator's user (nats-setup --operator-on-nodes).
func StartCluster(t *testing.T, o ClusterOptions) *Cluster {
	t.Helper()
	nw := NewNet(t)
	c := &Cluster{Net: nw, VIP: nw.Prefix + ".100", Name: "three"}
	c.Front = c.VIP
	var ips []string
	for i := 1; i <= 3; i++ {
		ips = append(ips, fmt.Sprintf("%s.%d", nw.Prefix, 10+i))
	}
	c.natsDir = secure(t, c.Name, ips)
	for i, ip := range ips {
		n := StartNodeWith(t, nw, fmt.Sprintf("n%d", i+1), ip, NodeOptions{DataMiB: o.DataMiB})
		c.install(t, n)
		c.Nodes = append(c.Nodes, n)
	}
	c.Client = StartNode(t, nw, "client", nw.Prefix+".50")
	c.Client.Must(t, "systemctl", "disable", "--now", "nats-server")
	for _, n := range c.Nodes {
		// The node's NATS settings as generated (its own server first,
		// its user, the CA), the rest from flags.
		n.Must(t, "sh", "-c", `set -a; . /etc/convex/nats/ccm.env; set +a; exec ccm init --force "$@"`, "ccm-init",
			"--vip-address", c.VIP, "--vip-interface", "eth0",
			"--election-leader-ttl-ms", strconv.Itoa(o.TTLMs), "--election-heartbeat-interval-ms", strconv.Itoa(o.HeartbeatMs),
			"--election-safety-margin-ms", strconv.Itoa(o.MarginMs), "--backend-start-grace-ms", "30000",
			"--wal-snapshot-interval-ms", strconv.Itoa(cmp.Or(o.SnapshotMs, config.Default().WAL.SnapshotIntervalMs)))
	}
	// JetStream needs its meta leader before ccm can create anything.
	Eventually(t, 60*time.Second, "NATS JetStream cluster up", func() bool {
		code, out := c.Nodes[0].Exec(t, "curl", "-sf", "http://127.0.0.1:8222/jsz")
		return code == 0 && strings.Contains(out, `"meta_cluster"`) && strings.Contains(out, `"leader"`)
	})
	c.Nodes[0].Must(t, "systemctl", "enable", "--now", "ccm.target")
	c.WaitServing(t, c.Nodes[0], 60*time.Second)
	for _, n := range c.Nodes[1:] {
		n.Must(t, "ccm", "join")
		n.Must(t, "systemctl", "enable", "--now", "ccm.target")
	}
	c.WaitPassivesCaughtUp(t, 60*time.Second)
	return c
}

// WaitServing waits until n is the leader, holds the VIP and its backend
// answers on it.
func (c *Cluster) WaitServing(t *testing.T, n *Node, within time.Duration) {
	t.Helper()
	Eventually(t, within, n.Name+" serves on the VIP", func() bool {
		st := n.Status(t)
		if st.Leader == nil || st.Leader.Node != n.Name || !n.HasVIP(t, c.VIP) {
			return false
		}
		code, _ := c.Client.Exec(t, "curl", "-sf", "-m", "1", "http://"+c.VIP+":3210/version")
		return code == 0
	})
}

// others returns the cluster's nodes other than n.
func (c *Cluster) others(n *Node) []*Node {
	var out []*Node
	for _, m := range c.Nodes {
		if m != n {
			out = append(out, m)
		}
	}
	return out
}

// WaitTakeover waits until a node other than old leads and holds the VIP,
// and returns it.
func (c *Cluster) WaitTakeover(t *testing.T, old *Node, within time.Duration) *Node {
	t.Helper()
	var next *Node
	// The VIP alone (only a ready leader holds it): ccm status times out
	// while a node is frozen, and timed the take-over at 20-67 s where
	// the journals showed 4 s.
	Eventually(t, within, "a node other than "+old.Name+" holds the VIP", func() bool {
		for _, n := range c.others(old) {
			if n.HasVIP(t, c.VIP) {
				next = n
				return true
			}
		}
		return false
	})
	return next
}

// Leader returns the node that serves on the VIP now.
func (c *Cluster) Leader(t *testing.T) *Node {
	t.Helper()
	var l *Node
	Eventually(t, 60*time.Second, "a leader", func() bool {
		for _, n := range c.Nodes {
			if st := n.Status(t); st.Leader != nil && st.Leader.HandoverTo == "" {
				for _, m := range c.Nodes {
					if m.Name == st.Leader.Node {
						l = m
					}
				}
				return l != nil
			}
		}
		return false
	})
	return l
}

// WaitPassivesCaughtUp waits until every non-leader applies the stream
// with no lag.
func (c *Cluster) WaitPassivesCaughtUp(t *testing.T, within time.Duration) {
	t.Helper()
	WaitCaughtUp(t, c.Nodes[0], len(c.Nodes), within)
}

// WaitCaughtUp waits until the status seen from n lists nodes live nodes,
// a leader, and every other node applying the stream with no lag.
func WaitCaughtUp(t *testing.T, n *Node, nodes int, within time.Duration) {
	t.Helper()
	Eventually(t, within, "passives caught up", func() bool {
		st := n.Status(t)
		live := 0
		for _, v := range st.Nodes {
			if v.Role != cli.RoleMissing { // a member that is down (docker kill) is listed as missing
				live++
			}
		}
		if st.Leader == nil || live != nodes {
			return false
		}
		for _, v := range st.Nodes {
			if v.ID == st.Leader.Node || v.Role == cli.RoleMissing {
				continue
			}
			if v.Apply == nil || v.Apply.State != schema.ApplyFollowing || v.Apply.LagTXIDs != 0 || v.Apply.LagBytes != 0 || v.Apply.Epoch != st.Leader.Epoch {
				return false
			}
		}
		return true
	})
}

// WaitNATSRoutes waits until every node's NATS server routes to the two
// others and JetStream answers on it.
func (c *Cluster) WaitNATSRoutes(t *testing.T, within time.Duration) {
	t.Helper()
	Eventually(t, within, "NATS routes between all three servers", func() bool {
		for _, n := range c.Nodes {
			code, out := n.Exec(t, "curl", "-sf", "-m", "2", "http://127.0.0.1:8222/routez")
			if code != 0 {
				return false
			}
			for _, m := range c.Nodes {
				if m != n && !strings.Contains(out, `"remote_name": "`+m.Name+`"`) {
					return false
				}
			}
		}
		return true
	})
}

// Writer writes through the VIP (Front) from the client container, recording
// every acknowledged value.
type Writer struct {
	c     *Cluster
	rated bool // a StartWriterAt writer: stopped by killing its curl
}

// StartWriter starts writing every 20 ms; each writer's values are unique
// in the cluster's life (w<writer>-<i>).
func (c *Cluster) StartWriter(t *testing.T) *Writer {
	t.Helper()
	c.writers++
	w := fmt.Sprintf("w%d-", c.writers)
	c.Client.Must(t, "sh", "-c", `rm -f /tmp/acks /tmp/writer.stop; nohup sh -c 'i=0; while [ ! -e /tmp/writer.stop ]; do i=$((i+1)); if curl -sf -m 0.5 -XPOST "http://`+c.Front+`:3210/write?v=`+w+`$i" >/dev/null; then echo "`+w+`$i $(date +%s%N)" >> /tmp/acks; fi; if [ $((i % 5)) = 0 ]; then curl -sf -m 0.5 -XPOST --data-binary "`+w+`$i" "http://`+c.Front+`:3210/storage?f=writer/`+w+`$i" >/dev/null; fi; sleep 0.02; done' >/dev/null 2>&1 &`)
	return &Writer{c: c}
}

// StartWriterAt starts writing through the VIP at about perSec writes a
// second, from one curl process (its --rate; a shell loop spawning a
// process per write reached 4/s where 10/s were asked), without uploads.
// Values are unique in the cluster's life (w<writer>-<i>).
func (c *Cluster) StartWriterAt(t *testing.T, perSec int) *Writer {
	t.Helper()
	c.writers++
	w := fmt.Sprintf("w%d-", c.writers)
	c.Client.Must(t, "sh", "-c", "rm -f /tmp/acks /tmp/writer.stop")
	c.Client.Must(t, "sh", "-c", fmt.Sprintf(`nohup bash -c 'stdbuf -oL curl -s -o /dev/null -m 0.5 --rate %d/s -XPOST "http://%s:3210/write?v=%s[1-100000000]" -w "%%{url_effective} %%{http_code}
" | while read -r u code; do if [[ $code == 200 ]]; then echo "${u##*v=} ${EPOCHREALTIME/./}000"; fi; done >> /tmp/acks' >/dev/null 2>&1 &`, perSec, c.VIP, w))
	return &Writer{c: c, rated: true}
}

// AssertUploadsServed fails unless the backend on the VIP serves the file
// of every upload row in its database (the writer uploads every fifth
// write): no database change may reach a node before the storage file it
// names.
func (c *Cluster) AssertUploadsServed(t *testing.T) {
	t.Helper()
	out := strings.TrimSpace(c.Client.Must(t, "curl", "-sf", "-m", "10", "http://"+c.VIP+":3210/uploads/missing"))
	first, _, _ := strings.Cut(out, "\n")
	if !strings.HasSuffix(first, " 0 missing") {
		t.Fatalf("upload rows whose storage file the new leader does not serve:\n%s", out)
	}
	t.Logf("uploads: %s", first)
}

// Stop stops the writer and returns the acknowledged values with their times.
func (w *Writer) Stop(t *testing.T) map[string]time.Time {
	t.Helper()
	w.c.Client.Must(t, "touch", "/tmp/writer.stop")
	if w.rated {
		w.c.Client.Exec(t, "pkill", "-f", "curl -s -o /dev/null -m 0.5 --rate")
	}
	time.Sleep(1500 * time.Millisecond)
	acks := map[string]time.Time{}
	for _, line := range strings.Split(w.c.Client.Must(t, "cat", "/tmp/acks"), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 {
			ns, _ := strconv.ParseInt(f[1], 10, 64)
			acks[f[0]] = time.Unix(0, ns)
		}
	}
	return acks
}

// Lost returns the acknowledged values missing from the serving backend,
// and the longest gap between consecutive acknowledgements. It fails the
// test if a write acknowledged by an earlier writer, present after its
// own failover, is missing now.
func (c *Cluster) Lost(t *testing.T, acks map[string]time.Time) ([]string, time.Duration) {
	t.Helper()
	have := map[string]bool{}
	for _, v := range strings.Split(c.Client.Must(t, "curl", "-sf", "-m", "5", "http://"+c.Front+":3210/values"), "\n") {
		have[strings.TrimSpace(v)] = true
	}
	var lost, later []string
	for v := range c.acked {
		if !have[v] {
			later = append(later, v)
		}
	}
	if len(later) > 0 {
		sort.Strings(later)
		t.Fatalf("%d writes acknowledged and kept through their own failover are gone now: %v", len(later), later)
	}
	if c.acked == nil {
		c.acked = map[string]time.Time{}
	}
	var times []time.Time
	for v, at := range acks {
		if !have[v] {
			lost = append(lost, v)
		} else {
			c.acked[v] = at
		}
		times = append(times, at)
	}
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	var gap time.Duration
	for i := 1; i < len(times); i++ {
		gap = max(gap, times[i].Sub(times[i-1]))
	}
	sort.Strings(lost)
	return lost, gap
}

// StartChecker samples, in every node, whether it holds the VIP and runs
// the backend (the stand-in's process exists), every ~10 ms: a bash loop
// that starts no process (the VIP from /proc/net/fib_trie, the stand-in
// from /proc/*/comm, the pause a read with a timeout), so that a loaded
// machine slows it little, timestamped with the shared host clock.
func (c *Cluster) StartChecker(t *testing.T) {
	t.Helper()
	// A sample whose reading took over 50 ms straddled a freeze (docker
	// pause): what it read may predate its time, so it is dropped. A
	// killed backend not yet reaped (a zombie, state Z) serves nothing.
	loop := `rm -f /tmp/checker.fifo; mkfifo /tmp/checker.fifo; exec 3<>/tmp/checker.fifo
while [ ! -e /tmp/checker.stop ]; do
  t0=${EPOCHREALTIME/./}
  v=0; mapfile -t L < /proc/net/fib_trie
  for ((i = 0; i + 1 < ${#L[@]}; i++)); do
    if [[ ${L[i]} == *"|-- ` + c.VIP + `" && ${L[i+1]} == *"/32 host LOCAL"* ]]; then v=1; break; fi
  done
  b=inactive
  for f in /proc/[0-9]*/stat; do
    if read -r st < "$f" 2>/dev/null && [[ $st == *"(standin) "[!Z]* ]]; then b=active; break; fi
  done
  t1=${EPOCHREALTIME/./}
  if (( t1 - t0 < 50000 )); then echo "${t1}000 $v $b" >> /tmp/samples; fi
  read -t 0.01 -u 3
done`
	for _, n := range c.Nodes {
		n.Must(t, "bash", "-c", "rm -f /tmp/samples /tmp/checker.stop; nohup bash -c '"+loop+"' >/dev/null 2>&1 &")
	}
}

// Checked is what the samplers saw.
type Checked struct {
	VIPs, Backends int // most holders of the VIP, and running backends, at once
	// VIPOverlap and BackendOverlap are the longest spans with more than one.
	VIPOverlap, BackendOverlap time.Duration
	Interval                   time.Duration // median sampling interval
}

// CheckerReport stops the samplers and reports what they saw.
func (c *Cluster) CheckerReport(t *testing.T) Checked {
	t.Helper()
	type sample struct {
		at      int64
		node    int
		vip, be bool
	}
	var all []sample
	var gaps []int64
	for i, n := range c.Nodes {
		n.Exec(t, "touch", "/tmp/checker.stop")
		var prev int64
		for _, line := range strings.Split(n.Must(t, "cat", "/tmp/samples"), "\n") {
			f := strings.Fields(line)
			if len(f) != 3 {
				continue
			}
			at, _ := strconv.ParseInt(f[0], 10, 64)
			all = append(all, sample{at: at, node: i, vip: f[1] != "0", be: f[2] == "active" || f[2] == "activating" || f[2] == "deactivating"})
			if prev != 0 {
				gaps = append(gaps, at-prev)
			}
			prev = at
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].at < all[j].at })
	vipNow := make([]bool, len(c.Nodes))
	beNow := make([]bool, len(c.Nodes))
	count := func(s []bool) int {
		n := 0
		for _, b := range s {
			if b {
				n++
			}
		}
		return n
	}
	// A node counts only while it is sampled: a paused container's last
	// sample says nothing about the seconds it was frozen.
	const stale = int64(time.Second) // sample times are in ns
	last := make([]int64, len(c.Nodes))
	fresh := func(now []bool, at int64) []bool {
		f := make([]bool, len(now))
		for i := range now {
			f[i] = now[i] && at-last[i] <= stale
		}
		return f
	}
	var r Checked
	var vipFrom, beFrom int64 // start of the current overlap, 0 if none
	overlap := func(n int, from *int64, at int64, longest *time.Duration) {
		switch {
		case n > 1 && *from == 0:
			*from = at
		case n > 1:
			*longest = max(*longest, time.Duration(at-*from))
		case *from != 0:
			*longest = max(*longest, time.Duration(at-*from))
			*from = 0
		}
	}
	for _, s := range all {
		vipNow[s.node], beNow[s.node], last[s.node] = s.vip, s.be, s.at
		v, b := count(fresh(vipNow, s.at)), count(fresh(beNow, s.at))
		r.VIPs, r.Backends = max(r.VIPs, v), max(r.Backends, b)
		overlap(v, &vipFrom, s.at, &r.VIPOverlap)
		overlap(b, &beFrom, s.at, &r.BackendOverlap)
	}
	sort.Slice(gaps, func(i, j int) bool { return gaps[i] < gaps[j] })
	if len(gaps) > 0 {
		r.Interval = time.Duration(gaps[len(gaps)/2])
	}
	return r
}

// PutStorageFile uploads size random bytes to the serving backend, through
// the VIP, as storage/path (the stand-in writes it like an upload) and
// returns their SHA-256.
func (c *Cluster) PutStorageFile(t *testing.T, path string, size int) string {
	t.Helper()
	out := c.Client.Must(t, "sh", "-c", fmt.Sprintf("head -c %d /dev/urandom > /tmp/up && curl -sf -m 10 -XPOST --data-binary @/tmp/up 'http://%s:3210/storage?f=%s' >/dev/null && sha256sum /tmp/up", size, c.VIP, path))
	return strings.Fields(out)[0]
}

// StorageFileSum returns the SHA-256 of storage/path as the backend on the
// VIP serves it.
func (c *Cluster) StorageFileSum(t *testing.T, path string) string {
	t.Helper()
	out := c.Client.Must(t, "sh", "-c", fmt.Sprintf("curl -sf -m 10 -o /tmp/down 'http://%s:3210/storage?f=%s' && sha256sum /tmp/down", c.VIP, path))
	return strings.Fields(out)[0]
}

// Settled waits, at most within, until the NATS cluster is as a single
// fault should find it: every stream a failover needs (the lease bucket,
// the WAL stream, the storage manifest and objects) has all its replicas
// current and is not led by n's own NATS server, as the serving
// ccm-elector leaves it. It reports whether that happened.
func (c *Cluster) Settled(t *testing.T, n *Node, within time.Duration) bool {
	t.Helper()
	nc, err := c.NATS(t, n, natsauth.MonitorUser)
	if err != nil {
		t.Logf("settled: connect to %s's NATS server: %v", n.Name, err)
		return false
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	needed := elector.FailoverStreams(c.Name)
	var why string
	settled := func(name string) bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s, err := js.Stream(ctx, name)
		if err != nil {
			why = fmt.Sprintf("%s: %v", name, err)
			return false
		}
		ci := s.CachedInfo().Cluster
		if ci == nil || ci.Leader == "" || ci.Leader == n.Name || len(ci.Replicas) != len(c.Nodes)-1 {
			why = fmt.Sprintf("%s: cluster info %+v", name, ci)
			return false
		}
		for _, r := range ci.Replicas {
			if !r.Current || r.Offline || r.Lag != 0 {
				why = fmt.Sprintf("%s: replica %+v", name, *r)
				return false
			}
		}
		return true
	}
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		if !slices.ContainsFunc(needed, func(name string) bool { return !settled(name) }) {
			return true
		}
	}
	t.Logf("not settled after %s: %s", within, why)
	return false
}

// WALStreamBytes is the WAL stream's size, as the NATS servers of nodes
// (all, if none are named) report it: the largest of their replicas.
func (c *Cluster) WALStreamBytes(t *testing.T, nodes ...*Node) uint64 {
	t.Helper()
	if len(nodes) == 0 {
		nodes = c.Nodes
	}
	var most uint64
	for _, n := range nodes {
		code, out := n.Exec(t, "curl", "-sf", "-m", "5", "http://127.0.0.1:8222/jsz?accounts=true&streams=true")
		if code != 0 {
			continue
		}
		var jsz struct {
			Accounts []struct {
				Streams []struct {
					Name  string `json:"name"`
					State struct {
						Bytes uint64 `json:"bytes"`
					} `json:"state"`
				} `json:"stream_detail"`
			} `json:"account_details"`
		}
		if err := json.Unmarshal([]byte(out), &jsz); err != nil {
			t.Fatalf("jsz of %s: %v", n.Name, err)
		}
		for _, a := range jsz.Accounts {
			for _, s := range a.Streams {
				if s.Name == walstream.Stream(c.Name) {
					most = max(most, s.State.Bytes)
				}
			}
		}
	}
	if most == 0 {
		t.Fatal("no NATS server reports the WAL stream")
	}
	return most
}

// DBDigest is integrity_check and a SHA3 of the rows of tables writes and
// big of the database at path on n: read in place when live (the leader's,
// in WAL mode), from a copy otherwise (a shadow is a plain page image that
// SQLite must not touch). A copy taken while a file is applied may be torn:
// the error is returned, for the caller to look again.
func DBDigest(t *testing.T, n *Node, path string, live bool) (string, error) {
	t.Helper()
	q := `"PRAGMA integrity_check; SELECT hex(sha3_query('SELECT * FROM writes ORDER BY rowid; SELECT * FROM big ORDER BY rowid'));"`
	cmd := "rm -f /tmp/digest.db* && cp " + path + " /tmp/digest.db && sqlite3 /tmp/digest.db " + q
	if live {
		cmd = "sqlite3 -cmd '.timeout 10000' " + path + " " + q
	}
	code, out := n.Exec(t, "sh", "-c", cmd)
	if code != 0 {
		return "", fmt.Errorf("%s: digest of %s: exit %d: %s", n.Name, path, code, strings.TrimSpace(out))
	}
	return strings.TrimSpace(out), nil
}

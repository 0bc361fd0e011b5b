//go:build integration && bench

package itest

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestBenchScale measures what a leader change costs as the database
// grows: with a 10 MiB and a 1 GiB database on the three-node cluster,
// three switchovers, three leader crashes and three walship kills each
// (write gap through the VIP, WAL stream bytes added, time until every
// passive is caught up again), then one 1 GiB transaction (time until
// applied on the passives, peak RSS of walship and walapply). It prints
// figures and asserts only that the runs happened. Run by `make bench-scale`.
func TestBenchScale(t *testing.T) {
	// Only the large transaction, on a small database: BENCH_SCALE=bigtx.
	t.Run("bigtx", func(t *testing.T) {
		if !strings.Contains(os.Getenv("BENCH_SCALE"), "bigtx") {
			t.Skip("BENCH_SCALE=bigtx runs it alone; the 1 GiB run includes it")
		}
		c := StartCluster(t, ClusterOptions{TTLMs: 3000, HeartbeatMs: 1000, MarginMs: 500})
		c.grow(t, c.Leader(t), 10, 10)
		c.bigTransaction(t, 1024)
	})
	for _, mib := range []int{10, 1024} {
		t.Run(fmt.Sprintf("db=%dMiB", mib), func(t *testing.T) {
			c := StartCluster(t, ClusterOptions{TTLMs: 3000, HeartbeatMs: 1000, MarginMs: 500})
			start := time.Now()
			c.grow(t, c.Leader(t), mib, 64)
			c.settle(t, 10*time.Minute)
			t.Logf("grew the database to %d MiB and caught up in %s", mib, time.Since(start).Round(time.Second))
			var sw, kill, restart []scaleRun
			for range 3 {
				sw = append(sw, c.scaleSwitchover(t))
			}
			for range 3 {
				kill = append(kill, c.scaleCrash(t))
			}
			for range 3 {
				restart = append(restart, c.scaleWalshipKill(t))
			}
			scaleReport(t, mib, "switchover", sw)
			scaleReport(t, mib, "leader kill", kill)
			scaleReport(t, mib, "walship kill", restart)
			if mib == 1024 {
				c.bigTransaction(t, 1024)
			}
		})
	}
}

// scaleRun is one leader change (or walship restart) measured.
type scaleRun struct {
	gap      time.Duration // longest gap between acknowledged writes
	lost     int
	writes   int           // acknowledged writes during the run (they are in the stream bytes too)
	stream   uint64        // WAL stream bytes added
	caughtUp time.Duration // from serving (or the restart) to every passive caught up
}

// grow adds mib MiB of incompressible rows to n's database in
// transactions of per MiB.
func (c *Cluster) grow(t *testing.T, n *Node, mib, per int) {
	t.Helper()
	for done := 0; done < mib; done += per {
		rows := min(per, mib-done) * 16
		n.Must(t, "sqlite3", "-cmd", ".timeout 60000", "/var/lib/convex/data/db.sqlite3", fmt.Sprintf(`CREATE TABLE IF NOT EXISTS big (b BLOB);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < %d) INSERT INTO big SELECT randomblob(65536) FROM c;`, rows))
	}
}

// settle writes a marker row through the VIP and waits until every live
// passive's shadow holds it: everything committed before it (a large
// transaction still being captured, say) is then applied everywhere.
// Apply status alone cannot tell, as it measures against the stream.
func (c *Cluster) settle(t *testing.T, within time.Duration) {
	t.Helper()
	c.syncN++
	v := fmt.Sprintf("settle-%d", c.syncN)
	c.Client.Must(t, "curl", "-sf", "-XPOST", "http://"+c.VIP+":3210/write?v="+v)
	l := c.Leader(t)
	for _, n := range c.Nodes {
		if n == l {
			continue
		}
		Eventually(t, within, v+" applied on "+n.Name, func() bool {
			// In place, read-only and immutable (no lock, no -shm): a read
			// torn by an apply fails or misses, and is tried again.
			code, out := n.Exec(t, "sqlite3", "file:/var/lib/convex/replica/db.sqlite3?immutable=1", "SELECT count(*) FROM writes WHERE v='"+v+"'")
			return code == 0 && strings.TrimSpace(out) == "1"
		})
	}
	c.WaitPassivesCaughtUp(t, within)
}

func (c *Cluster) scaleSwitchover(t *testing.T) scaleRun {
	t.Helper()
	c.settle(t, 5*time.Minute)
	old := c.Leader(t)
	target := c.others(old)[0]
	before := c.WALStreamBytes(t)
	w := c.StartWriter(t)
	time.Sleep(2 * time.Second)
	old.Must(t, "ccm", "promote", "--node", target.Name)
	c.WaitServing(t, target, 2*time.Minute)
	served := time.Now()
	WaitCaughtUp(t, target, 3, 5*time.Minute)
	caught := time.Since(served)
	time.Sleep(time.Second)
	acks := w.Stop(t)
	lost, gap := c.Lost(t, acks)
	return scaleRun{gap: gap, lost: len(lost), writes: len(acks), stream: c.WALStreamBytes(t) - before, caughtUp: caught}
}

func (c *Cluster) scaleCrash(t *testing.T) scaleRun {
	t.Helper()
	c.settle(t, 5*time.Minute)
	old := c.Leader(t)
	live := c.others(old)
	before := c.WALStreamBytes(t)
	w := c.StartWriter(t)
	time.Sleep(2 * time.Second)
	old.Docker(t, "kill")
	next := c.WaitTakeover(t, old, 90*time.Second)
	c.WaitServing(t, next, 2*time.Minute)
	served := time.Now()
	WaitCaughtUp(t, next, 2, 5*time.Minute)
	caught := time.Since(served)
	time.Sleep(time.Second)
	acks := w.Stop(t)
	lost, gap := c.Lost(t, acks)
	added := c.WALStreamBytes(t, live...) - before
	old.Docker(t, "start")
	Eventually(t, 90*time.Second, "systemd on "+old.Name, func() bool {
		code, _ := old.Exec(t, "systemctl", "is-system-running")
		return code == 0
	})
	c.WaitNATSRoutes(t, 90*time.Second)
	rejoin := time.Now()
	c.WaitPassivesCaughtUp(t, 10*time.Minute)
	t.Logf("%s rejoined and caught up in %s", old.Name, time.Since(rejoin).Round(time.Millisecond))
	return scaleRun{gap: gap, lost: len(lost), writes: len(acks), stream: added, caughtUp: caught}
}

func (c *Cluster) scaleWalshipKill(t *testing.T) scaleRun {
	t.Helper()
	c.settle(t, 5*time.Minute)
	l := c.Leader(t)
	before := c.WALStreamBytes(t)
	w := c.StartWriter(t)
	time.Sleep(2 * time.Second)
	restarts := func() int {
		n, _ := strconv.Atoi(strings.TrimSpace(l.Must(t, "systemctl", "show", "--property=NRestarts", "--value", "ccm-walship")))
		return n
	}
	was := restarts()
	l.Must(t, "systemctl", "kill", "--signal=SIGKILL", "ccm-walship")
	Eventually(t, 60*time.Second, "ccm-walship restarted", func() bool { return restarts() > was && l.Active(t, "ccm-walship") })
	restarted := time.Now()
	time.Sleep(time.Second)
	WaitCaughtUp(t, l, 3, 5*time.Minute)
	caught := time.Since(restarted)
	acks := w.Stop(t)
	lost, gap := c.Lost(t, acks)
	return scaleRun{gap: gap, lost: len(lost), writes: len(acks), stream: c.WALStreamBytes(t) - before, caughtUp: caught}
}

// bigTransaction commits mib MiB in one transaction on the leader and
// reports how long until both passives applied it, and the peak RSS of
// walship and walapply (VmHWM: the whole life of each process).
func (c *Cluster) bigTransaction(t *testing.T, mib int) {
	t.Helper()
	c.settle(t, 5*time.Minute)
	l := c.Leader(t)
	before := c.WALStreamBytes(t)
	start := time.Now()
	c.grow(t, l, mib, mib)
	committed := time.Since(start)
	applyStart := time.Now()
	c.settle(t, 10*time.Minute)
	applied := time.Since(applyStart)
	added := c.WALStreamBytes(t) - before
	line := fmt.Sprintf("BENCH one %d MiB transaction: committed in %s, applied on both passives %s after the commit (%.0f MiB/s end to end), stream +%.1f MiB",
		mib, committed.Round(time.Millisecond), applied.Round(time.Millisecond), float64(mib)/(committed+applied).Seconds(), float64(added)/(1<<20))
	t.Log(line)
	fmt.Println(line)
	for _, n := range c.Nodes {
		for _, unit := range []string{"ccm-walship", "ccm-walapply"} {
			pid := strings.TrimSpace(n.Must(t, "systemctl", "show", "--property=MainPID", "--value", unit))
			code, out := n.Exec(t, "sh", "-c", "grep -E 'VmHWM|VmRSS' /proc/"+pid+"/status | tr -s ' \\t' ' ' | tr '\\n' ' '")
			if code != 0 || pid == "0" {
				continue
			}
			line := fmt.Sprintf("BENCH peak RSS %s %s (role %s): %s", n.Name, unit, roleOf(t, c, n), strings.TrimSpace(out))
			t.Log(line)
			fmt.Println(line)
		}
		// What went wrong, if anything: the daemons' warnings and errors.
		// The daemons log to stderr: journald files every line at priority
		// info, so the level is matched in the line.
		if _, warn := n.Exec(t, "sh", "-c", "journalctl -u ccm-walship -u ccm-walapply -u ccm-elector -u ccm-backend --no-pager -o short-precise --since=-15min | grep -E 'level.{0,3}(WARN|ERROR)' | tail -40"); strings.TrimSpace(warn) != "" {
			t.Logf("warnings on %s during the transaction:\n%s", n.Name, warn)
		}
		code, out := n.Exec(t, "sh", "-c", "journalctl -u ccm-walship -u ccm-walapply --no-pager | grep -ci 'watchdog timeout' || true")
		if code == 0 && strings.TrimSpace(out) != "0" {
			fmt.Printf("BENCH %s: %s watchdog timeouts of walship/walapply\n", n.Name, strings.TrimSpace(out))
		}
	}
}

func roleOf(t *testing.T, c *Cluster, n *Node) string {
	if l := c.Leader(t); l == n {
		return "leader"
	}
	return "passive"
}

func scaleReport(t *testing.T, mib int, what string, runs []scaleRun) {
	t.Helper()
	med := func(f func(scaleRun) float64) float64 {
		var v []float64
		for _, r := range runs {
			v = append(v, f(r))
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	lost, writes := 0, 0
	for _, r := range runs {
		lost += r.lost
		writes += r.writes
	}
	line := fmt.Sprintf("BENCH db=%dMiB %-12s runs=%d write gap median=%.0fms  stream added median=%.1f KiB (%d writes in all runs)  passives caught up median=%.0fms after serving  lost=%d",
		mib, what, len(runs), med(func(r scaleRun) float64 { return float64(r.gap.Milliseconds()) }),
		med(func(r scaleRun) float64 { return float64(r.stream) / 1024 }), writes,
		med(func(r scaleRun) float64 { return float64(r.caughtUp.Milliseconds()) }), lost)
	t.Log(line)
	fmt.Println(line)
}

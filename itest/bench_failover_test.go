//go:build integration && bench

package itest

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// TestBenchFailover measures switchover and leader-crash failover on a
// three-node cluster, five runs each, at the default lease TTL and at 3 s.
// It prints figures and asserts only that the runs happened: speed is
// reported, not tested. Run by `make bench-failover`.
func TestBenchFailover(t *testing.T) {
	for _, o := range []ClusterOptions{
		{TTLMs: 10000, HeartbeatMs: 3000, MarginMs: 1000},
		{TTLMs: 3000, HeartbeatMs: 1000, MarginMs: 500},
	} {
		t.Run(fmt.Sprintf("ttl=%dms", o.TTLMs), func(t *testing.T) {
			c := StartCluster(t, o)
			var sw, kill []run
			for range 5 {
				sw = append(sw, c.switchover(t))
			}
			for range 5 {
				kill = append(kill, c.crash(t))
			}
			report(t, o, "switchover", sw)
			report(t, o, "leader kill", kill)
		})
	}
}

// run is one failover measured from the client.
type run struct {
	unavailable time.Duration // longest gap between acknowledged writes
	lost        int           // acknowledged writes missing afterwards
	toVIP       time.Duration // from the trigger to the VIP on the new node
}

func (c *Cluster) switchover(t *testing.T) run {
	t.Helper()
	c.WaitPassivesCaughtUp(t, 90*time.Second)
	old := c.Leader(t)
	target := c.others(old)[0]
	w := c.StartWriter(t)
	time.Sleep(2 * time.Second)
	start := time.Now()
	old.Must(t, "ccm", "promote", "--node", target.Name)
	Eventually(t, 60*time.Second, "VIP on "+target.Name, func() bool { return target.HasVIP(t, c.VIP) })
	toVIP := time.Since(start)
	c.WaitServing(t, target, 60*time.Second)
	time.Sleep(2 * time.Second)
	lost, gap := c.Lost(t, w.Stop(t))
	return run{unavailable: gap, lost: len(lost), toVIP: toVIP}
}

func (c *Cluster) crash(t *testing.T) run {
	t.Helper()
	c.WaitPassivesCaughtUp(t, 120*time.Second)
	old := c.Leader(t)
	w := c.StartWriter(t)
	time.Sleep(2 * time.Second)
	start := time.Now()
	old.Docker(t, "kill")
	var next *Node
	Eventually(t, 90*time.Second, "VIP on another node", func() bool {
		for _, n := range c.others(old) {
			if n.HasVIP(t, c.VIP) {
				next = n
				return true
			}
		}
		return false
	})
	toVIP := time.Since(start)
	c.WaitServing(t, next, 60*time.Second)
	time.Sleep(2 * time.Second)
	lost, gap := c.Lost(t, w.Stop(t))
	// Bring the old leader back; it rejoins as a passive.
	old.Docker(t, "start")
	Eventually(t, 60*time.Second, "systemd on "+old.Name, func() bool {
		code, _ := old.Exec(t, "systemctl", "is-system-running")
		return code == 0
	})
	return run{unavailable: gap, lost: len(lost), toVIP: toVIP}
}

func report(t *testing.T, o ClusterOptions, what string, runs []run) {
	med := func(f func(run) time.Duration) (time.Duration, time.Duration) {
		var v []time.Duration
		for _, r := range runs {
			v = append(v, f(r))
		}
		slices.Sort(v)
		return v[len(v)/2], v[len(v)-1]
	}
	um, ux := med(func(r run) time.Duration { return r.unavailable })
	vm, vx := med(func(r run) time.Duration { return r.toVIP })
	lost := 0
	for _, r := range runs {
		lost += r.lost
	}
	line := fmt.Sprintf("BENCH ttl=%dms %-11s runs=%d unavailability median=%s max=%s  time-to-VIP median=%s max=%s  acknowledged writes lost=%d",
		o.TTLMs, what, len(runs), um.Round(time.Millisecond), ux.Round(time.Millisecond), vm.Round(time.Millisecond), vx.Round(time.Millisecond), lost)
	t.Log(line)
	fmt.Println(line)
}

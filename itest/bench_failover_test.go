//go:build integration && bench

package itest

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestBenchFailover measures switchover, leader-crash and leader-partition
// failover on a three-node cluster, five runs each, at the default lease
// TTL and at 3 s.
// It prints figures and asserts only that the runs happened: speed is
// reported, not tested. Run by `make bench-failover`.
func TestBenchFailover(t *testing.T) {
	for _, o := range []ClusterOptions{
		{TTLMs: 10000, HeartbeatMs: 3000, MarginMs: 1000},
		{TTLMs: 3000, HeartbeatMs: 1000, MarginMs: 500},
	} {
		t.Run(fmt.Sprintf("ttl=%dms", o.TTLMs), func(t *testing.T) {
			c := StartCluster(t, o)
			var sw, kill, cut []run
			for range 5 {
				sw = append(sw, c.switchover(t))
			}
			for range 5 {
				kill = append(kill, c.fault(t, "kill"))
			}
			for range 5 {
				cut = append(cut, c.fault(t, "partition"))
			}
			report(t, o, "switchover", sw)
			report(t, o, "leader kill", kill)
			report(t, o, "partition", cut)
		})
	}
}

// run is one failover measured from the client.
type run struct {
	unavailable time.Duration // longest gap between acknowledged writes
	lost        int           // acknowledged writes missing afterwards
	toVIP       time.Duration // from the trigger to the VIP on the new node
	// The breakdown of a crash, from the new leader's elector log: from
	// the kill to its winning the lease (TTL expiry, JetStream electing
	// the dead node's stream leaders again, the campaign), and its
	// promotion (drain, storage, database, backend start).
	won, promoted time.Duration
	vip           time.Duration // from the promotion's end to ccm-vip's "VIP acquired"
	settled       bool          // no stream the failover needs was led by the leader's NATS server
	acks          int           // acknowledged writes
	window        time.Duration // from the writer's start to its stop
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

// fault cuts the leader off, "kill" (docker kill) or "partition" (Cut
// from the cluster's network), measures the
// take-over, and brings the node back as a passive. Each fault starts
// from a settled cluster (a single fault, not one on top of the last):
// the passives caught up, every NATS replica of the streams the failover
// needs current, and none of those streams led by the leader's own NATS
// server (as ccm-elector leaves it within seconds of a leader change,
// once the peers have been current for 15 s).
func (c *Cluster) fault(t *testing.T, kind string) run {
	t.Helper()
	return c.faultWith(t, kind, func() *Writer { return c.StartWriter(t) })
}

// faultWith is fault with the writer that write starts; kind may also be
// "natsfreeze" (SIGSTOP of the leader's own nats-server, SIGCONT once
// another node serves).
func (c *Cluster) faultWith(t *testing.T, kind string, write func() *Writer) run {
	t.Helper()
	c.WaitPassivesCaughtUp(t, 120*time.Second)
	old := c.Leader(t)
	settled := c.Settled(t, old, 60*time.Second)
	began := time.Now()
	w := write()
	time.Sleep(2 * time.Second)
	start := time.Now()
	switch kind {
	case "kill":
		old.Docker(t, "kill")
	case "partition":
		old.Cut(t, c.Net)
	case "natsfreeze":
		old.Must(t, "systemctl", "kill", "--signal=SIGSTOP", "nats-server")
	}
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
	if kind == "natsfreeze" {
		// Resumed before asking ccm status anything: while a server of the
		// NATS cluster is stopped with its connections open, requests
		// through it hang (ccm status timed out for minutes).
		old.Must(t, "systemctl", "kill", "--signal=SIGCONT", "nats-server")
	}
	c.WaitServing(t, next, 60*time.Second)
	won, promoted, acquired := promotionTimes(t, next, start)
	time.Sleep(2 * time.Second)
	acks := w.Stop(t)
	window := time.Since(began)
	lost, gap := c.Lost(t, acks)
	// Bring the old leader back; it rejoins as a passive.
	switch kind {
	case "kill":
		old.Docker(t, "start")
		Eventually(t, 60*time.Second, "systemd on "+old.Name, func() bool {
			code, _ := old.Exec(t, "systemctl", "is-system-running")
			return code == 0
		})
	case "partition":
		old.Heal(t, c.Net)
		c.WaitNATSRoutes(t, 60*time.Second)
	case "natsfreeze":
		c.WaitNATSRoutes(t, 60*time.Second)
	}
	r := run{unavailable: gap, lost: len(lost), toVIP: toVIP, won: won.Sub(start), promoted: promoted, settled: settled,
		acks: len(acks), window: window}
	if !acquired.IsZero() {
		r.vip = acquired.Sub(won.Add(promoted))
	}
	return r
}

// promotionTimes reads from n's logs, after since, when n won the lease,
// how long its promotion took and when its ccm-vip acquired the VIP.
func promotionTimes(t *testing.T, n *Node, since time.Time) (won time.Time, took time.Duration, acquired time.Time) {
	t.Helper()
	out := n.Must(t, "sh", "-c", fmt.Sprintf(`journalctl -u ccm-elector -u ccm-vip --no-pager -o cat --since=@%d | grep -E '"msg":"(role changed|promotion complete|VIP acquired)"' || true`, since.Unix()))
	for _, line := range strings.Split(out, "\n") {
		var e struct {
			Time time.Time     `json:"time"`
			Msg  string        `json:"msg"`
			To   string        `json:"to"`
			Took time.Duration `json:"took"`
		}
		if json.Unmarshal([]byte(line), &e) != nil || e.Time.Before(since) {
			continue
		}
		switch {
		case e.Msg == "role changed" && e.To == "leader":
			won = e.Time
		case e.Msg == "promotion complete":
			took = e.Took
		case e.Msg == "VIP acquired":
			acquired = e.Time
		}
	}
	return won, took, acquired
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
	lost, settled := 0, 0
	for _, r := range runs {
		lost += r.lost
		if r.settled {
			settled++
		}
	}
	line := fmt.Sprintf("BENCH ttl=%dms %-11s runs=%d unavailability median=%s max=%s  time-to-VIP median=%s max=%s  acknowledged writes lost=%d",
		o.TTLMs, what, len(runs), um.Round(time.Millisecond), ux.Round(time.Millisecond), vm.Round(time.Millisecond), vx.Round(time.Millisecond), lost)
	if wm, _ := med(func(r run) time.Duration { return r.won }); wm > 0 {
		pm, _ := med(func(r run) time.Duration { return r.promoted })
		am, _ := med(func(r run) time.Duration { return r.vip })
		line += fmt.Sprintf("  settled before the fault %d/%d  breakdown (medians): fault to lease won %s, promotion %s, promotion end to VIP acquired %s",
			settled, len(runs), wm.Round(time.Millisecond), pm.Round(time.Millisecond), am.Round(time.Millisecond))
	}
	t.Log(line)
	fmt.Println(line)
}

//go:build integration && bench

package itest

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// TestBenchLoss measures the acknowledged writes a failover loses when the
// leader is cut off (its own NATS server frozen, or a network partition),
// at about 10 and 200 writes/s, without the bound on unshipped changes
// (wal.maxUnshippedMs 0: the leader acknowledges until its lease ends) and
// with the default (1000 ms: its backend is frozen). Lease TTL 10 s. Two
// runs per case; figures only. Run by `make bench-loss`.
func TestBenchLoss(t *testing.T) {
	o := ClusterOptions{TTLMs: 10000, HeartbeatMs: 3000, MarginMs: 1000}
	c := StartCluster(t, o)
	writers := []struct {
		name  string
		loops int
		pause time.Duration
	}{{"10/s", 1, 100 * time.Millisecond}, {"200/s", 8, 0}}
	for _, bound := range []int{0, 1000} {
		c.setMaxUnshipped(t, bound)
		for _, kind := range []string{"natsfreeze", "partition"} {
			for _, wr := range writers {
				var runs []run
				for range 2 {
					runs = append(runs, c.faultWith(t, kind, func() *Writer { return c.StartWriterAt(t, wr.loops, wr.pause) }))
				}
				var lost []int
				rate := 0.0
				for _, r := range runs {
					lost = append(lost, r.lost)
					rate += float64(r.acks) / r.window.Seconds() / float64(len(runs))
				}
				slices.Sort(lost)
				line := fmt.Sprintf("BENCH loss ttl=%dms maxUnshippedMs=%d fault=%s writer=%s achieved=%.0f acks/s runs=%d lost=%v (bound's worth: %.0f)",
					o.TTLMs, bound, kind, wr.name, rate, len(runs), lost, rate*float64(bound)/1000)
				t.Log(line)
				fmt.Println(line)
			}
		}
	}
}

// setMaxUnshipped sets wal.maxUnshippedMs on every node and restarts
// ccm-backend to apply it, then waits for the leader to serve.
func (c *Cluster) setMaxUnshipped(t *testing.T, ms int) {
	t.Helper()
	for _, n := range c.Nodes {
		n.Must(t, "sh", "-c", fmt.Sprintf(`sed -i 's/"maxUnshippedMs": *[0-9]*/"maxUnshippedMs": %d/' /etc/convex/cluster.json && grep -q '"maxUnshippedMs": %d' /etc/convex/cluster.json && systemctl restart ccm-backend`, ms, ms))
	}
	c.WaitServing(t, c.Leader(t), 60*time.Second)
}

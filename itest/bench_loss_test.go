//go:build integration && bench

package itest

import (
	"fmt"
	"os"
	"slices"
	"strconv"
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
	rates := []int{10, 200}
	bounds := []int{0, 1000}
	if b := os.Getenv("BENCH_LOSS_BOUND"); b != "" { // one of them
		n, err := strconv.Atoi(b)
		if err != nil {
			t.Fatalf("BENCH_LOSS_BOUND=%q: want milliseconds", b)
		}
		bounds = []int{n}
	}
	for _, bound := range bounds {
		c.setMaxUnshipped(t, bound)
		for _, kind := range []string{"natsfreeze", "partition"} {
			for _, rate := range rates {
				var runs []run
				for range 2 {
					runs = append(runs, c.faultWith(t, kind, func() *Writer { return c.StartWriterAt(t, rate) }))
				}
				var lost []int
				achieved := 0.0
				for _, r := range runs {
					lost = append(lost, r.lost)
					achieved += float64(r.acks) / r.window.Seconds() / float64(len(runs))
				}
				slices.Sort(lost)
				line := fmt.Sprintf("BENCH loss ttl=%dms maxUnshippedMs=%d fault=%s writer=%d/s achieved=%.0f acks/s (over the whole window, outage included) runs=%d lost=%v (the bound's worth at the rate asked: %d)",
					o.TTLMs, bound, kind, rate, achieved, len(runs), lost, rate*bound/1000)
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

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
// with the default (1000 ms: its backend is frozen). Lease TTL 10 s.
// BENCH_LOSS_RUNS runs per case (default 3), BENCH_LOSS_BOUND and
// BENCH_LOSS_FAULT pick one bound or one fault; figures only. Run by
// `make bench-loss`.
func TestBenchLoss(t *testing.T) {
	o := ClusterOptions{TTLMs: 10000, HeartbeatMs: 3000, MarginMs: 1000}
	rates := []int{10, 200}
	bounds := []int{0, 1000}
	if b := os.Getenv("BENCH_LOSS_BOUND"); b != "" {
		n, err := strconv.Atoi(b)
		if err != nil || n < 0 {
			t.Fatalf("BENCH_LOSS_BOUND=%q: want milliseconds", b)
		}
		bounds = []int{n}
	}
	faults := []string{"natsfreeze", "partition"}
	if f := os.Getenv("BENCH_LOSS_FAULT"); f != "" {
		if !slices.Contains(faults, f) {
			t.Fatalf("BENCH_LOSS_FAULT=%q: want one of %v", f, faults)
		}
		faults = []string{f}
	}
	runs := 3
	if r := os.Getenv("BENCH_LOSS_RUNS"); r != "" {
		n, err := strconv.Atoi(r)
		if err != nil || n < 1 {
			t.Fatalf("BENCH_LOSS_RUNS=%q: want a count of runs", r)
		}
		runs = n
	}
	c := StartCluster(t, o)
	for _, bound := range bounds {
		c.setMaxUnshipped(t, bound)
		for _, kind := range faults {
			for _, rate := range rates {
				var lost []int
				achieved := 0.0
				for range runs {
					r := c.faultWith(t, kind, func() *Writer { return c.StartWriterAt(t, rate) })
					lost = append(lost, r.lost)
					achieved += float64(r.acks) / r.window.Seconds() / float64(runs)
				}
				slices.Sort(lost)
				line := fmt.Sprintf("BENCH loss ttl=%dms maxUnshippedMs=%d fault=%s writer=%d/s achieved=%.0f acks/s (over the whole window, outage included) runs=%d lost=%v median=%d (the bound's worth at the rate asked: %d)",
					o.TTLMs, bound, kind, rate, achieved, runs, lost, lost[len(lost)/2], rate*bound/1000)
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

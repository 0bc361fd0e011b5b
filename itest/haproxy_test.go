//go:build integration

package itest

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// haproxyConfig sends the client's requests on 127.0.0.1:3210 to the node
// whose ccm-elector answers GET /leader with 200 on its metrics port.
func haproxyConfig(nodes []*Node) string {
	var b strings.Builder
	b.WriteString(`global
    log stdout format raw local0
defaults
    mode http
    timeout connect 500ms
    timeout client 5s
    timeout server 5s
frontend convex
    bind 127.0.0.1:3210
    default_backend leader
backend leader
    option httpchk GET /leader
    http-check expect status 200
    default-server inter 250ms fall 2 rise 1 on-marked-down shutdown-sessions
`)
	for _, n := range nodes {
		fmt.Fprintf(&b, "    server %s %s:3210 check port 9470\n", n.Name, n.IP)
	}
	return b.String()
}

// TestClusterBehindHAProxy runs the cluster without a VIP (ccm-vip
// stopped on every node): HAProxy in the client container finds the
// leader with `option httpchk GET /leader` on each node's ccm-elector and
// the writer goes through it. A switchover moves HAProxy's traffic to the
// new leader with no acknowledged write lost; a leader frozen past the
// TTL (a crash, as the others see it) is replaced, HAProxy follows, and
// after it resumes it gets no traffic; writes lost there were
// acknowledged within the loss window before the freeze. The write gaps
// are logged.
func TestClusterBehindHAProxy(t *testing.T) {
	c, old := startSettled(t, ClusterOptions{TTLMs: 3000, HeartbeatMs: 1000, MarginMs: 500})
	for _, n := range c.Nodes {
		n.Must(t, "systemctl", "disable", "--now", "ccm-vip")
		if n.HasVIP(t, c.VIP) {
			t.Fatalf("%s still holds the VIP with ccm-vip stopped", n.Name)
		}
	}
	c.Client.Must(t, "sh", "-c", "cat > /etc/haproxy/haproxy.cfg <<'EOF'\n"+haproxyConfig(c.Nodes)+"EOF\nsystemctl enable --now haproxy")
	c.Front = "127.0.0.1"
	// answering is the node whose backend answers through HAProxy ("" if none).
	answering := func() string {
		_, out := c.Client.Exec(t, "sh", "-c", `curl -s -m 1 -o /dev/null -D - http://127.0.0.1:3210/version | tr -d '\r' | sed -n 's/^X-Node: //Ip'`)
		return strings.TrimSpace(out)
	}
	Eventually(t, 30*time.Second, "HAProxy sends requests to "+old.Name, func() bool { return answering() == old.Name })

	t.Run("switchover", func(t *testing.T) {
		w := c.StartWriter(t)
		time.Sleep(2 * time.Second)
		target := c.others(old)[0]
		start := time.Now()
		target.Must(t, "ccm", "promote", "--node", target.Name)
		Eventually(t, 30*time.Second, "HAProxy sends requests to "+target.Name, func() bool { return answering() == target.Name })
		t.Logf("HAProxy sends to %s %s after the promote began", target.Name, time.Since(start).Round(time.Millisecond))
		time.Sleep(2 * time.Second)
		acks := w.Stop(t)
		lost, gap := c.Lost(t, acks)
		t.Logf("switchover behind HAProxy: %d acks, %d lost, longest write gap %s", len(acks), len(lost), gap.Round(time.Millisecond))
		if len(lost) > 0 {
			t.Fatalf("acknowledged writes lost in a switchover: %v", lost)
		}
	})

	t.Run("frozen leader", func(t *testing.T) {
		l := c.Leader(t)
		w := c.StartWriter(t)
		time.Sleep(2 * time.Second)
		l.Docker(t, "pause")
		paused := time.Now()
		unpause := sync.OnceFunc(func() { l.Docker(t, "unpause") })
		defer unpause()
		var next string
		Eventually(t, 60*time.Second, "HAProxy sends requests to a new leader", func() bool {
			next = answering()
			return next != "" && next != l.Name
		})
		t.Logf("HAProxy sends to %s %s after %s froze", next, time.Since(paused).Round(time.Millisecond), l.Name)
		time.Sleep(time.Second)
		unpause()
		time.Sleep(3 * time.Second)
		if a := answering(); a != next {
			t.Fatalf("after %s resumed, HAProxy sends to %q, want %s", l.Name, a, next)
		}
		acks := w.Stop(t)
		lost, gap := c.Lost(t, acks)
		t.Logf("frozen leader behind HAProxy: %d acks, %d lost, longest write gap %s", len(acks), len(lost), gap.Round(time.Millisecond))
		for _, v := range lost {
			if at := acks[v]; at.Before(paused.Add(-lossWindow)) || at.After(paused) {
				t.Errorf("lost %s, acknowledged %s before the freeze (loss window %s)", v, paused.Sub(at).Round(time.Millisecond), lossWindow)
			}
		}
	})
}

//go:build integration

package itest

import (
	"strings"
	"testing"
	"time"
)

// TestVIPMovesWithHandover checks from a client container that the VIP
// answers from node A, then after a handover from node B, and that the
// client's neighbour entry switches to B's MAC through gratuitous ARP alone.
func TestVIPMovesWithHandover(t *testing.T) {
	nw := NewNet(t)
	a := StartNode(t, nw, "a", nw.Prefix+".11")
	b := StartNode(t, nw, "b", nw.Prefix+".12")
	client := StartNode(t, nw, "client", nw.Prefix+".50")
	vip := nw.Prefix + ".100"
	natsURL := "nats://" + a.IP + ":4222"
	for _, n := range []*Node{a, b} {
		n.Init(t, "two", natsURL, "--vip-address", vip, "--vip-interface", "eth0",
			"--election-leader-ttl-ms", "3000", "--election-heartbeat-interval-ms", "1000", "--election-safety-margin-ms", "500")
	}
	b.Must(t, "systemctl", "disable", "--now", "nats-server") // b uses a's NATS
	a.Must(t, "systemctl", "enable", "--now", "ccm.target")
	Eventually(t, 30*time.Second, "a holds the VIP", func() bool { return a.HasVIP(t, vip) })
	b.Must(t, "systemctl", "enable", "--now", "ccm.target")
	WaitCaughtUp(t, a, 2, 60*time.Second) // b may campaign only once it has a's epoch

	// The client talks to the VIP: its neighbour entry is a's MAC.
	client.Must(t, "ping", "-c", "1", "-W", "2", vip)
	neigh := func() string { return client.Must(t, "ip", "neigh", "show", vip) }
	if !strings.Contains(neigh(), a.MAC(t)) {
		t.Fatalf("client neighbour entry %q, want a's MAC %s", neigh(), a.MAC(t))
	}

	a.Must(t, "ccm", "promote", "--node", "b")
	Eventually(t, 30*time.Second, "b holds the VIP and a does not", func() bool { return b.HasVIP(t, vip) && !a.HasVIP(t, vip) })
	// No traffic and no cache flush on the client: gratuitous ARP updates it.
	Eventually(t, 10*time.Second, "client's neighbour entry moves to b's MAC", func() bool {
		return strings.Contains(neigh(), b.MAC(t))
	})
	if !b.Active(t, "convex-backend") || a.Active(t, "convex-backend") {
		t.Fatal("the backend did not move with the VIP")
	}
	client.Must(t, "curl", "-sf", "http://"+vip+":3210/version")
}

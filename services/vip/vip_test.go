package vip

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/convex-cluster-manager/ccm/shared/config"
	"github.com/convex-cluster-manager/ccm/shared/daemon"
	"github.com/convex-cluster-manager/ccm/shared/daemon/daemontest"
	"github.com/convex-cluster-manager/ccm/shared/natstest"
	"github.com/convex-cluster-manager/ccm/shared/schema"
	"github.com/convex-cluster-manager/ccm/shared/waitfor"
)

// netns creates two network namespaces joined by a veth pair on a /24 the
// test picks, removed when the test ends. Nothing touches the host's own
// interfaces.
func netns(t *testing.T) (a, b, subnet string) {
	t.Helper()
	tag := fmt.Sprintf("%04x", rand.IntN(1<<16))
	a, b = "ccmA"+tag, "ccmB"+tag
	subnet = fmt.Sprintf("10.%d.%d", 200+rand.IntN(50), rand.IntN(250))
	sh := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	sh("ip", "netns", "add", a)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", a).Run() })
	sh("ip", "netns", "add", b)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", b).Run() })
	sh("ip", "link", "add", "va"+tag, "netns", a, "type", "veth", "peer", "name", "vb"+tag, "netns", b)
	sh("ip", "-n", a, "addr", "add", subnet+".1/24", "dev", "va"+tag)
	sh("ip", "-n", b, "addr", "add", subnet+".2/24", "dev", "vb"+tag)
	sh("ip", "-n", a, "link", "set", "va"+tag, "up")
	sh("ip", "-n", b, "link", "set", "vb"+tag, "up")
	return a, b, subnet
}

func nsOut(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, _ := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	return string(out)
}

func TestVIPFollowsReadyLeaderWithDeadline(t *testing.T) {
	if _, err := exec.LookPath("arping"); err != nil {
		t.Fatal("arping (iputils) is required: apt-get install iputils-arping")
	}
	a, b, subnet := netns(t)
	iface := "va" + a[4:]
	vipAddr := subnet + ".100"
	srv := natstest.Server(t)
	cfg := config.Default()
	cfg.ClusterID, cfg.NodeID = "vt", "n1"
	cfg.NATS.Servers = []string{srv.ClientURL()}
	cfg.VIP = config.VIP{Address: vipAddr, Netmask: 24, Interface: iface, ARPCount: 2, ARPRepeatMs: 300}
	spec := Spec()
	spec.New = func(env daemon.Env) (daemon.Daemon, error) { return newDaemon(env, []string{"ip", "netns", "exec", a}) }
	d := daemontest.Start[*Daemon](t, spec, cfg)

	// B learns A's MAC for the VIP from gratuitous ARP alone: give it a
	// stale entry first.
	exec.Command("ip", "-n", b, "neigh", "replace", vipAddr, "lladdr", "02:00:00:00:00:99", "dev", "vb"+a[4:], "nud", "stale").Run()
	nc := natstest.Connect(t, srv.ClientURL())
	epoch := natstest.TakeLeaderKey(t, nc, "vt", "n1")
	publish := func(role schema.Role, ready bool, deadline time.Time) {
		ev, _ := json.Marshal(schema.RoleEvent{Cluster: "vt", Node: "n1", Role: role, Epoch: epoch, Ready: ready, Deadline: deadline, At: time.Now()})
		nc.Publish(schema.RoleSubject("vt", "n1"), ev)
		nc.Flush()
	}
	has := func() bool {
		return strings.Contains(nsOut(t, a, "ip", "-o", "addr", "show", "dev", iface), vipAddr+"/24")
	}
	waitHas := func(want bool, within time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		waitfor.Poll(t, within, 5*time.Millisecond, func() error {
			if got := has(); got != want {
				return fmt.Errorf("VIP present = %v, want %v", got, want)
			}
			return nil
		})
		return time.Since(start)
	}

	publish(schema.RoleLeader, false, time.Now().Add(time.Minute))
	time.Sleep(300 * time.Millisecond)
	if has() {
		t.Fatal("VIP added for a leader that is not ready")
	}
	publish(schema.RoleLeader, true, time.Now().Add(time.Minute))
	waitHas(true, 2*time.Second)
	mac := strings.Fields(nsOut(t, a, "cat", "/sys/class/net/"+iface+"/address"))[0]
	waitfor.Cond(t, 3*time.Second, func() error {
		if neigh := nsOut(t, b, "ip", "neigh", "show", vipAddr); !strings.Contains(neigh, mac) {
			return fmt.Errorf("B's neighbour entry for the VIP: %q, want A's MAC %s", neigh, mac)
		}
		return nil
	})
	if out := nsOut(t, b, "arping", "-c", "1", "-w", "2", "-I", "vb"+a[4:], vipAddr); !strings.Contains(out, "Received 1 response") ||
		!strings.Contains(strings.ToLower(out), mac) {
		t.Fatalf("B asking who has the VIP: %s, want an answer from %s", out, mac)
	}

	// The kernel holds the VIP only until about the lease's deadline, and
	// longer as the lease is renewed: a frozen or killed ccm-vip cannot
	// keep it past the lease.
	lifetime := func() int {
		t.Helper()
		f := strings.Fields(nsOut(t, a, "ip", "-o", "-4", "addr", "show", "dev", iface, "to", vipAddr))
		for i, v := range f {
			if v == "valid_lft" && i+1 < len(f) {
				if n, err := strconv.Atoi(strings.TrimSuffix(f[i+1], "sec")); err == nil {
					return n
				}
				t.Fatalf("the VIP's kernel lifetime is %q, want seconds", f[i+1])
			}
		}
		t.Fatalf("no lifetime for the VIP in %q", f)
		return 0
	}
	if n := lifetime(); n > 60 || n < 55 {
		t.Fatalf("VIP held for %ds by the kernel, want the lease's deadline (60s)", n)
	}
	publish(schema.RoleLeader, true, time.Now().Add(5*time.Second))
	time.Sleep(300 * time.Millisecond)
	if n := lifetime(); n < 55 {
		t.Fatalf("an earlier deadline shortened the VIP's lifetime to %ds", n)
	}
	publish(schema.RoleLeader, true, time.Now().Add(90*time.Second))
	waitfor.Cond(t, 2*time.Second, func() error {
		if n := lifetime(); n < 85 {
			return fmt.Errorf("a renewed lease did not extend the VIP's lifetime: %ds, want about 90s", n)
		}
		return nil
	})

	// Removed behind ccm-vip's back: it comes back.
	nsOut(t, a, "ip", "addr", "del", vipAddr+"/24", "dev", iface)
	waitHas(true, 3*time.Second)

	// Passive: released at once.
	publish(schema.RolePassive, false, time.Time{})
	waitHas(false, time.Second)

	// Less than the kernel's smallest lifetime (1 s) left: not added (it
	// would outlive the lease).
	publish(schema.RoleLeader, true, time.Now().Add(600*time.Millisecond))
	time.Sleep(300 * time.Millisecond)
	if has() {
		t.Fatal("VIP added for a lease with 600ms left: its 1 s kernel lifetime outlives the lease")
	}

	// Dead-man switch: a leader event that is not renewed expires on its own.
	publish(schema.RoleLeader, true, time.Now().Add(1500*time.Millisecond))
	waitHas(true, time.Second)
	start := time.Now()
	waitHas(false, 2*time.Second)
	t.Logf("VIP dropped %s after the last event, deadline was 1.5s", time.Since(start))

	// Added by hand on a non-leader: removed by the reconcile loop.
	nsOut(t, a, "ip", "addr", "add", vipAddr+"/24", "dev", iface)
	waitHas(false, 3*time.Second)

	// Released on stop.
	publish(schema.RoleLeader, true, time.Now().Add(time.Minute))
	waitHas(true, time.Second)
	d.Stop()
	if has() {
		t.Fatal("VIP still held after ccm-vip stopped")
	}
}

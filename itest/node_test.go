//go:build integration

package itest

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/shared/schema"
	"github.com/convex-cluster-manager/ccm/shared/walstream"
)

// leaderNode starts one node, configures it as a one-node cluster with a
// VIP and a short lease, enables ccm.target and waits until it serves.
func leaderNode(t *testing.T) (*Node, Net, string) {
	t.Helper()
	return leaderNodeTTL(t, 3000)
}

// leaderNodeTTL is leaderNode with a lease of ttlMs (heartbeat a third of
// it, safety margin 500 ms).
func leaderNodeTTL(t *testing.T, ttlMs int) (*Node, Net, string) {
	t.Helper()
	nw := NewNet(t)
	n := StartNode(t, nw, "n1", nw.Prefix+".11")
	vip := nw.Prefix + ".100"
	n.Init(t, "one", "nats://127.0.0.1:4222", "--vip-address", vip, "--vip-interface", "eth0",
		"--election-leader-ttl-ms", strconv.Itoa(ttlMs), "--election-heartbeat-interval-ms", strconv.Itoa(ttlMs/3), "--election-safety-margin-ms", "500")
	n.Must(t, "systemctl", "enable", "--now", "ccm.target")
	Eventually(t, 30*time.Second, "n1 serves as leader", func() bool {
		st := n.Status(t)
		if st.Leader == nil || st.Leader.Node != "n1" || !n.HasVIP(t, vip) {
			return false
		}
		code, _ := n.Exec(t, "curl", "-sf", "http://"+vip+":3210/version")
		return code == 0
	})
	return n, nw, vip
}

func TestSingleNodeCluster(t *testing.T) {
	n, _, vip := leaderNode(t)
	// Writes through the backend on the VIP reach the WAL stream.
	for i := range 5 {
		out := n.Must(t, "curl", "-sf", "-XPOST", fmt.Sprintf("http://%s:3210/write?v=w%d", vip, i))
		if _, err := strconv.Atoi(strings.TrimSpace(out)); err != nil {
			t.Fatalf("write %d: %q", i, out)
		}
	}
	nc, err := nats.Connect("nats://" + n.IP + ":4222")
	require.NoError(t, err)
	defer nc.Close()
	msg, err := nc.Request(schema.Endpoint("one", "n1", schema.ServiceWalship, "flush"), nil, 10*time.Second)
	if err != nil || msg.Header.Get("Nats-Service-Error") != "" {
		t.Fatalf("flush: %v %s", err, msg.Header.Get("Nats-Service-Error"))
	}
	var f schema.FlushReply
	json.Unmarshal(msg.Data, &f)
	js, _ := jetstream.New(nc)
	s, err := js.Stream(context.Background(), walstream.Stream("one"))
	require.NoError(t, err)
	last, err := s.GetLastMsgForSubject(context.Background(), walstream.Subject("one"))
	require.NoError(t, err)
	m, err := walstream.ParseMeta(last.Header)
	if err != nil || m.Kind != walstream.KindLTX || uint64(m.MaxTXID) != f.TXID || last.Sequence != f.Seq {
		t.Fatalf("last stream message %+v (seq %d), flush says TXID %d seq %d", m, last.Sequence, f.TXID, f.Seq)
	}
	if f.TXID < 2 {
		t.Fatalf("flushed TXID %d: the writes did not reach the stream", f.TXID)
	}
	// Every daemon unit has the shared settings of ccm-.service.d/ and
	// its own capabilities.
	caps := map[string]string{"ccm-vip": "cap_net_admin cap_net_raw", "ccm-backend": "cap_kill"}
	for _, d := range []string{"ccm-elector", "ccm-walship", "ccm-walapply", "ccm-snapshot", "ccm-vip", "ccm-backend", "ccm-storage"} {
		out := n.Must(t, "systemctl", "show", d, "-p", "Type,NotifyAccess,Restart,RestartUSec,WatchdogUSec,TimeoutStopUSec,PartOf,NoNewPrivileges,ProtectSystem,PrivateTmp,StartLimitIntervalUSec,CapabilityBoundingSet,DropInPaths")
		want := []string{"Type=notify", "NotifyAccess=main", "Restart=on-failure", "RestartUSec=250ms", "WatchdogUSec=10s", "TimeoutStopUSec=15s",
			"PartOf=ccm.target", "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "StartLimitIntervalUSec=0", "CapabilityBoundingSet=" + caps[d],
			"DropInPaths=/etc/systemd/system/ccm-.service.d/10-ccm.conf"}
		for _, w := range want {
			if !slices.Contains(strings.Split(strings.TrimSpace(out), "\n"), w) {
				t.Errorf("%s: want %s in:\n%s", d, w, out)
			}
		}
		// Every unit rated "OK" or better (exposure at most 4.9).
		if code, out := n.Exec(t, "systemd-analyze", "security", "--no-pager", "--threshold=49", d+".service"); code != 0 {
			lines := strings.Split(strings.TrimSpace(out), "\n")
			t.Errorf("%s: systemd-analyze security: %s", d, lines[len(lines)-1])
		}
	}
	// Every daemon runs as the unprivileged user ccm, the backend as its
	// own user convex; polkit lets ccm control the backend's unit only.
	for _, d := range []string{"ccm-elector", "ccm-walship", "ccm-walapply", "ccm-snapshot", "ccm-vip", "ccm-backend", "ccm-storage", "standin"} {
		want := "ccm"
		if d == "standin" {
			want = "convex"
		}
		if u := strings.TrimSpace(n.Must(t, "ps", "-o", "user=", "-C", d)); u != want {
			t.Errorf("%s runs as %q, want %s", d, u, want)
		}
	}
	if code, out := n.Exec(t, "runuser", "-u", "ccm", "--", "systemctl", "--no-ask-password", "restart", "nats-server"); code == 0 || !strings.Contains(out, "authentication required") {
		t.Errorf("user ccm restarted nats-server (exit %d): %s", code, out)
	}
	n.Must(t, "runuser", "-u", "ccm", "--", "systemctl", "--no-ask-password", "kill", "--signal=SIGCONT", "convex-backend")
	// Its users can work together: the first promotion served (an
	// unwritable database made the backend fail and the elector retry).
	if _, out := n.Exec(t, "journalctl", "--no-pager", "-u", "ccm-elector", "-g", "promotion failed"); strings.Contains(out, "promotion failed") {
		t.Errorf("a promotion failed:\n%s", out)
	}
	// Every binary tells its version; a daemon with a broken configuration
	// exits 78 and systemd does not restart it (RestartPreventExitStatus).
	for _, d := range []string{"ccm", "ccm-elector", "ccm-walship", "ccm-walapply", "ccm-snapshot", "ccm-vip", "ccm-backend", "ccm-storage"} {
		if out := n.Must(t, d, "--version"); !strings.HasPrefix(out, d+" ") {
			t.Errorf("%s --version: %q", d, out)
		}
	}
	n.Must(t, "sh", "-c", "cp /etc/convex/cluster.json /tmp/good.json && sed -i 's/\"clusterId\"/\"clusterID\"/' /etc/convex/cluster.json && systemctl restart ccm-snapshot || true")
	time.Sleep(3 * time.Second)
	got := strings.Fields(n.Must(t, "systemctl", "show", "ccm-snapshot", "-p", "ActiveState,ExecMainStatus,NRestarts"))
	slices.Sort(got) // systemctl's order, not the order asked
	n.Must(t, "sh", "-c", "cp /tmp/good.json /etc/convex/cluster.json && systemctl restart ccm-snapshot")
	if want := []string{"ActiveState=failed", "ExecMainStatus=78", "NRestarts=0"}; !slices.Equal(got, want) {
		_, log := n.Exec(t, "journalctl", "--no-pager", "-n", "5", "-u", "ccm-snapshot")
		t.Errorf("ccm-snapshot with a misspelt field in its configuration: %v, want %v; journal:\n%s", got, want, log)
	}
}

func TestBackendControlWithSystemd(t *testing.T) {
	n, _, _ := leaderNode(t)
	nc, err := nats.Connect("nats://" + n.IP + ":4222")
	require.NoError(t, err)
	defer nc.Close()
	st := n.Status(t)
	call := func(verb string) error {
		body, _ := json.Marshal(schema.EpochRequest{Epoch: st.Leader.Epoch})
		msg, err := nc.Request(schema.Endpoint("one", "n1", schema.ServiceBackend, verb), body, time.Minute)
		if err != nil {
			return err
		}
		if e := msg.Header.Get("Nats-Service-Error"); e != "" {
			return fmt.Errorf("%s", e)
		}
		return nil
	}
	require.NoError(t, call("stop"))
	if n.Active(t, "convex-backend") {
		t.Fatal("backend still active after stop")
	}
	require.NoError(t, call("start"))
	if !n.Active(t, "convex-backend") {
		t.Fatal("backend not active after start")
	}
	n.Must(t, "curl", "-sf", "http://127.0.0.1:3210/version")

	// A crash is restarted by systemd, and health comes back.
	n.Must(t, "systemctl", "kill", "--signal=SIGKILL", "convex-backend")
	Eventually(t, 15*time.Second, "backend restarted after SIGKILL", func() bool {
		code, _ := n.Exec(t, "curl", "-sf", "http://127.0.0.1:3210/version")
		return code == 0
	})

	// A backend that cannot start fails its start request.
	n.Must(t, "sh", "-c", "echo STANDIN_CRASH=1 > /etc/convex/standin.env")
	call("stop")
	if err := call("start"); err == nil {
		t.Fatal("start of a crashing backend succeeded")
	} else {
		t.Logf("start refused: %v", err)
	}
}

func TestWatchdogRestartsHungDaemon(t *testing.T) {
	n, _, _ := leaderNode(t)
	before := n.Status(t).Leader.Epoch
	restarts := func() int {
		out := n.Must(t, "systemctl", "show", "--property=NRestarts", "--value", "ccm-walship")
		v, _ := strconv.Atoi(strings.TrimSpace(out))
		return v
	}
	r0 := restarts()
	n.Must(t, "systemctl", "kill", "--signal=SIGSTOP", "ccm-walship")
	Eventually(t, 40*time.Second, "systemd restarts the hung ccm-walship", func() bool {
		return restarts() > r0 && n.Active(t, "ccm-walship")
	})
	st := n.Status(t)
	if st.Leader == nil || st.Leader.Node != "n1" || st.Leader.Epoch != before {
		t.Fatalf("leadership moved while walship hung: %+v (epoch before %d)", st.Leader, before)
	}
}

// followDeadline follows n's role events until the test ends and returns
// the newest lease deadline announced so far, once there is one.
func followDeadline(t *testing.T, n *Node) func() time.Time {
	t.Helper()
	nc, err := nats.Connect("nats://" + n.IP + ":4222")
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	var mu sync.Mutex
	var deadline time.Time
	if _, err := nc.Subscribe(schema.RoleSubjects("one"), func(m *nats.Msg) {
		var ev schema.RoleEvent
		if json.Unmarshal(m.Data, &ev) == nil && ev.Deadline.After(deadline) {
			mu.Lock()
			deadline = ev.Deadline
			mu.Unlock()
		}
	}); err != nil {
		t.Fatal(err)
	}
	newest := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return deadline
	}
	Eventually(t, 5*time.Second, "a role event with a deadline", func() bool { return !newest().IsZero() })
	return newest
}

func TestDeadManSwitch(t *testing.T) {
	n, _, vip := leaderNode(t)
	newest := followDeadline(t, n)
	// Cut the elector and the local NATS away at once; nothing tells the
	// other daemons to stop: they must enforce the deadline themselves,
	// even while the backend's health checks hang (each would take the
	// probe's whole 2 s timeout).
	n.Must(t, "touch", "/etc/convex/standin.hang")
	n.Must(t, "sh", "-c", "systemctl kill --signal=SIGKILL ccm-elector nats-server; systemctl stop ccm-elector nats-server")
	deadline := newest()
	Eventually(t, time.Until(deadline)+3*time.Second, "VIP and backend gone", func() bool {
		return !n.HasVIP(t, vip) && !n.Active(t, "convex-backend")
	})
	late := time.Since(deadline)
	t.Logf("VIP and backend gone %s after the newest lease deadline the leader announced", late.Round(time.Millisecond))
	// The deadline is the lease's expiry minus the safety margin (500 ms
	// here): past the margin another node may hold the lease.
	if late > 500*time.Millisecond {
		t.Fatalf("VIP/backend gone %s after the deadline, want within the 500ms safety margin", late)
	}
}

// TestWatchdogAbortEnforcesTheLease: ccm-backend is stopped (SIGSTOP) on
// the leader while the lease ends, so its loop cannot act on it, until
// systemd's watchdog (10 s) aborts it (SIGABRT, with a SIGCONT) — as after
// a frozen node resumes, when every watchdog fires at once. Before dying
// it must kill the backend of the lease that ended, or wait for the end
// of one that has not (a 14 s lease outlasts the watchdog). Without that,
// the restarted ccm-backend killed the backend 1.6 s (CI,
// TestClusterFrozenLeader) to 5 s after the lease's deadline; and the
// abort, sent to every process of the unit, also killed the systemctl
// child making the kill.
func TestWatchdogAbortEnforcesTheLease(t *testing.T) {
	for _, ttl := range []int{3000, 14000} {
		t.Run(fmt.Sprintf("ttl=%dms", ttl), func(t *testing.T) {
			n, _, _ := leaderNodeTTL(t, ttl)
			newest := followDeadline(t, n)
			n.Must(t, "systemctl", "kill", "--signal=SIGSTOP", "ccm-backend")
			n.Must(t, "sh", "-c", "systemctl kill --signal=SIGKILL ccm-elector nats-server; systemctl stop ccm-elector nats-server")
			deadline := newest()
			Eventually(t, 30*time.Second, "the watchdog's abort of the stopped ccm-backend, and the backend stopped", func() bool {
				return !n.Active(t, "convex-backend")
			})
			// When each happened, from the journal (microseconds).
			at := func(grep string) time.Time {
				t.Helper()
				out := n.Must(t, "sh", "-c", "journalctl --no-pager -o short-unix | grep -m1 -E '"+grep+"' | cut -d' ' -f1")
				sec, err := strconv.ParseFloat(strings.TrimSpace(out), 64)
				if err != nil {
					t.Fatalf("journal time of %q: %q", grep, out)
				}
				return time.Unix(0, int64(sec*1e9))
			}
			// The backend's end: killed (its unit is not restarted after a
			// SIGKILL), or stopped.
			abort, stopped := at("ccm-backend.service: Watchdog timeout"), at("convex-backend.service: Main process exited|Stopped convex-backend.service")
			due := abort
			if deadline.After(due) {
				due = deadline
			}
			late := stopped.Sub(due)
			t.Logf("watchdog abort %s after the lease's deadline; backend stopped %s after the later of the two",
				abort.Sub(deadline).Round(time.Millisecond), late.Round(time.Millisecond))
			if stopped.Before(deadline) {
				t.Fatalf("backend stopped %s before the lease's deadline", deadline.Sub(stopped))
			}
			if late > 500*time.Millisecond {
				t.Fatalf("backend stopped %s after the abort and the deadline, want it killed on the way out (within 500ms)", late)
			}
			// Then it dies of the abort, as a daemon the watchdog aborts
			// should (once, the abort's re-raise was ignored and systemd
			// killed it 15 s later).
			var exit string
			Eventually(t, 20*time.Second, "ccm-backend's exit after the abort", func() bool {
				_, exit = n.Exec(t, "sh", "-c", "journalctl --no-pager -u ccm-backend | grep -m1 'Main process exited'")
				return exit != ""
			})
			if strings.Contains(exit, "status=9/KILL") || time.Since(due) > 10*time.Second {
				t.Fatalf("ccm-backend did not exit by itself after the abort: %s", strings.TrimSpace(exit))
			}
		})
	}
}

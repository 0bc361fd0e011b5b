package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
)

// cluster is a work directory with a nats-server and the processes started in it.
type cluster struct {
	dir   string
	url   string
	procs map[string]*exec.Cmd
	keep  bool
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// newCluster starts a nats-server in a new work directory; sync is its
// JetStream sync_interval ("" for the default).
func newCluster(keep bool, sync string) (*cluster, error) {
	dir, err := os.MkdirTemp("", "ccm-bench-")
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	c := &cluster{dir: dir, url: fmt.Sprintf("nats://127.0.0.1:%d", port), procs: map[string]*exec.Cmd{}, keep: keep}
	args := []string{"-js", "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-sd", filepath.Join(dir, "js")}
	if sync != "" {
		conf := filepath.Join(dir, "nats.conf")
		if err := os.WriteFile(conf, []byte(fmt.Sprintf("jetstream { sync_interval: %q }\n", sync)), 0o644); err != nil {
			return nil, err
		}
		args = append(args, "-c", conf)
	}
	if err := c.start("nats-server", "nats-server", args...); err != nil {
		return nil, err
	}
	for i := 0; i < 100; i++ {
		if nc, err := nats.Connect(c.url); err == nil {
			nc.Close()
			return c, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.close()
	return nil, fmt.Errorf("nats-server on %s did not start", c.url)
}

// start runs a process with its output in <dir>/<name>.log.
func (c *cluster) start(name, bin string, args ...string) error {
	log, err := os.Create(filepath.Join(c.dir, name+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	c.procs[name] = cmd
	return nil
}

func (c *cluster) close() {
	for _, p := range c.procs {
		p.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range c.procs {
		done := make(chan struct{})
		go func() { p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			p.Process.Kill()
			<-done
		}
	}
	if !c.keep {
		os.RemoveAll(c.dir)
	}
}

// nodeConfig writes node id's cluster.json and returns its path.
func (c *cluster) nodeConfig(bin, id string) (string, error) {
	path := filepath.Join(c.dir, id+".json")
	out, err := exec.Command(filepath.Join(bin, "ccm"), "init", "--config", path, "--cluster-id", "bench", "--node-id", id,
		"--nats-servers", c.url, "--backend-data-path", filepath.Join(c.dir, id, "data"),
		"--wal-replica-path", filepath.Join(c.dir, id, "replica")).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("ccm init %s: %v: %s", id, err, out)
	}
	return path, os.MkdirAll(filepath.Join(c.dir, id, "data"), 0o755)
}

// waitFor polls a daemon's status endpoint until ok accepts the reply
// (for at most 30 s; waitForWithin sets the limit).
func waitFor(url, subject string, ok func(json.RawMessage) bool) error {
	return waitForWithin(url, subject, 30*time.Second, ok)
}

func waitForWithin(url, subject string, within time.Duration, ok func(json.RawMessage) bool) error {
	nc, err := nats.Connect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if m, err := nc.Request(subject, nil, time.Second); err == nil {
			var r struct{ Status json.RawMessage }
			if json.Unmarshal(m.Data, &r) == nil && ok(r.Status) {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("timed out waiting on %s", subject)
}

func measureCCM(ctx context.Context, o options, rate int) (result, error) {
	c, err := newCluster(o.keep, o.natsSync)
	if err != nil {
		return result{}, err
	}
	defer c.close()
	conf1, err := c.nodeConfig(o.bin, "n1")
	if err != nil {
		return result{}, err
	}
	conf2, err := c.nodeConfig(o.bin, "n2")
	if err != nil {
		return result{}, err
	}
	leaderDB := filepath.Join(c.dir, "n1", "data", "db.sqlite3")
	if err := createLeaderDB(leaderDB); err != nil {
		return result{}, err
	}
	if err := c.start("elector-n1", filepath.Join(o.bin, "ccm-elector"), "-config", conf1, "-metrics-addr", ""); err != nil {
		return result{}, err
	}
	if err := waitFor(c.url, "ccm.bench.n1.elector.status", func(m json.RawMessage) bool { return strings.Contains(string(m), `"role":"leader"`) }); err != nil {
		return result{}, err
	}
	for name, args := range map[string][]string{
		"ccm-walship": {"-config", conf1, "-metrics-addr", ""},
		// As deployed: each shipped file waits for ccm-storage's barrier.
		"ccm-storage":  {"-config", conf1, "-metrics-addr", ""},
		"elector-n2":   {"-config", conf2, "-metrics-addr", ""},
		"ccm-walapply": {"-config", conf2, "-metrics-addr", ""},
	} {
		bin := strings.Replace(name, "elector-n2", "ccm-elector", 1)
		if err := c.start(name, filepath.Join(o.bin, bin), args...); err != nil {
			return result{}, err
		}
	}
	if err := waitFor(c.url, "ccm.bench.n1.walship.status", func(m json.RawMessage) bool { return strings.Contains(string(m), `"shipping":true`) }); err != nil {
		return result{}, err
	}
	if err := waitFor(c.url, "ccm.bench.n2.walapply.status", func(m json.RawMessage) bool {
		return strings.Contains(string(m), `"txid":1`) || strings.Contains(string(m), `"txid":2`)
	}); err != nil {
		return result{}, err
	}
	replica := filepath.Join(c.dir, "n2", "replica", "db.sqlite3")
	return measure(ctx, c, "ccm", leaderDB, replica, rate, o.duration, []string{"ccm-walship", "ccm-walapply"})
}

func measure(ctx context.Context, c *cluster, system, leader, replica string, rate int, d time.Duration, watch []string) (result, error) {
	r := result{system: system, rate: rate, cpu: map[string]time.Duration{}, rss: map[string]int64{}}
	before := map[string]time.Duration{}
	for _, name := range watch {
		before[name] = procCPU(c.procs[name].Process.Pid)
	}
	start := time.Now()
	lags, commits, unseen, err := drive(ctx, leader, replica, rate, d)
	if err != nil {
		return r, err
	}
	r.writeWindow = time.Since(start)
	for _, name := range watch {
		pid := c.procs[name].Process.Pid
		r.cpu[name] = procCPU(pid) - before[name]
		r.rss[name] = procPeakRSS(pid)
	}
	r.lags, r.commits, r.lost = lags, commits, unseen
	return r, nil
}

func measureLitestream(ctx context.Context, o options, rate int) (result, error) {
	c, err := newCluster(o.keep, o.natsSync)
	if err != nil {
		return result{}, err
	}
	defer c.close()
	leaderDB := filepath.Join(c.dir, "leader.db")
	if err := createLeaderDB(leaderDB); err != nil {
		return result{}, err
	}
	nc, err := nats.Connect(c.url)
	if err != nil {
		return result{}, err
	}
	js, _ := nc.JetStream()
	if _, err := js.CreateObjectStore(&nats.ObjectStoreConfig{Bucket: "ls"}); err != nil {
		nc.Close()
		return result{}, fmt.Errorf("create bucket: %w", err)
	}
	nc.Close()
	replicaURL := c.url + "/ls"
	cfg := filepath.Join(c.dir, "litestream.yml")
	// Litestream's defaults, as a user would run it.
	os.WriteFile(cfg, []byte(fmt.Sprintf("dbs:\n  - path: %s\n    replicas:\n      - url: %s\n", leaderDB, replicaURL)), 0o644)
	if err := c.start("litestream-replicate", o.litestream, "replicate", "-config", cfg); err != nil {
		return result{}, err
	}
	// restore -f needs something to restore: wait for the first snapshot.
	restored := filepath.Join(c.dir, "restored.db")
	var lastErr error
	for i := 0; i < 60; i++ {
		time.Sleep(500 * time.Millisecond)
		if c.procs["litestream-restore"] != nil {
			break
		}
		out, err := exec.Command(o.litestream, "ltx", replicaURL).CombinedOutput()
		if err == nil && strings.Contains(string(out), ".ltx") || err == nil && len(strings.Fields(string(out))) > 6 {
			if err := c.start("litestream-restore", o.litestream, "restore", "-f", "-o", restored, replicaURL); err != nil {
				return result{}, err
			}
		}
		lastErr = err
	}
	if c.procs["litestream-restore"] == nil {
		return result{}, fmt.Errorf("no replica to restore from: %v", lastErr)
	}
	for i := 0; i < 100 && visibleTable(restored) != nil; i++ {
		time.Sleep(100 * time.Millisecond)
	}
	return measure(ctx, c, "litestream", leaderDB, restored, rate, o.duration, []string{"litestream-replicate", "litestream-restore"})
}

package walapply_test

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/services/walship"
	"github.com/convex-cluster-manager/ccm/shared/daemon/daemontest"
	"github.com/convex-cluster-manager/ccm/shared/replica"
	"github.com/convex-cluster-manager/ccm/shared/waitfor"
)

// shipChild ships the database at path as epoch 1 until killed, and
// prints how it started ("start: <how>: <reason>"). For each "flush" line
// on its stdin it flushes and prints "flushed <TXID>".
func shipChild(url, path string) error {
	js, err := childJetStream(url)
	if err != nil {
		return err
	}
	s, err := walship.Open(context.Background(), js, walship.ShipperOptions{
		DBPath: path, Cluster: cluster, Node: "leader", Epoch: 1, Interval: 20 * time.Millisecond, Log: daemontest.Logger(),
	})
	if err != nil {
		return err
	}
	how, reason := s.Start()
	fmt.Printf("start: %s: %s\n", how, reason)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		txid, err := s.Flush(context.Background())
		if err != nil {
			return err
		}
		fmt.Printf("flushed %d\n", uint64(txid))
	}
	select {}
}

// lazyError is an error whose message is made only when it is read (once,
// when a wait fails): a message naming a running child's log, which the
// child writes meanwhile, then reads it only on failure, not at each poll.
type lazyError func() string

func (f lazyError) Error() string { return f() }

// TestShipKilledResumes kills walship with SIGKILL at random points while
// a writer commits: every restart resumes the chain (no full copy in the
// stream) and the passive follows to the leader's content, never refusing
// a message.
func TestShipKilledResumes(t *testing.T) {
	e := newEnv(t)
	grow(t, e.dbPath, 64)
	var stderr *strings.Builder // the running child's log
	start := func() (*exec.Cmd, string) {
		t.Helper()
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "CCM_SHIP_CHILD_NATS="+e.url, "CCM_SHIP_CHILD_DB="+e.dbPath, "CCM_TEST_LOG=1")
		out, err := cmd.StdoutPipe()
		require.NoError(t, err)
		stderr = &strings.Builder{}
		cmd.Stderr = stderr
		require.NoError(t, cmd.Start())
		line, err := bufio.NewReader(out).ReadString('\n')
		if err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("walship child did not start: %v: %s", err, stderr.String())
		}
		return cmd, strings.TrimSpace(line)
	}
	cmd, how := start()
	if !strings.HasPrefix(how, "start: full copy") {
		t.Fatalf("first start of a new chain: %q, want a full copy", how)
	}
	r := e.follow(t, "passive")

	// A writer commits small transactions all along.
	ctx, stopWriting := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		w := openDB(t, writerDSN(e.dbPath))
		defer w.Close()
		for i := 0; ctx.Err() == nil; i++ {
			w.Exec(`INSERT INTO docs (body) VALUES (?)`, fmt.Sprint("row ", i))
			time.Sleep(2 * time.Millisecond)
		}
	}()
	time.Sleep(time.Second)
	// The kills are restarts of a recorded chain: wait until the full copy
	// is in the stream and recorded (slow on a loaded machine).
	waitfor.Cond(t, time.Minute, func() error {
		if _, err := replica.ReadSums(replica.SumsPath(e.dbPath)); err != nil {
			return fmt.Errorf("the first full copy was not recorded: %v", err)
		}
		return nil
	})
	before := e.streamBytes(t)
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, seed))
	for kill := range 6 {
		time.Sleep(time.Duration(100+rng.IntN(700)) * time.Millisecond)
		cmd.Process.Kill()
		cmd.Wait()
		cmd, how = start()
		if !strings.HasPrefix(how, "start: resume") {
			t.Fatalf("restart %d after kill -9 (seed %d): %q, want resume", kill+1, seed, how)
		}
	}
	stopWriting()
	wg.Wait()
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	waitfor.Poll(t, time.Minute, 100*time.Millisecond, func() error {
		_, want := digest(t, e.dbPath)
		_, got := digest(t, snapshotCopy(t, r.shadow.Path()))
		if got == want {
			return nil
		}
		select {
		case err := <-r.done:
			r.done <- err
			t.Fatalf("the passive stopped applying: %v", err)
		default:
		}
		pos := r.position()
		// The running child's log is read only once the wait has failed.
		return lazyError(func() string {
			log := stderr.String()
			return fmt.Sprintf("passive %s, leader %s (passive at %+v); walship's log ends:\n%s", got, want, pos, log[max(0, len(log)-6000):])
		})
	})
	grown := e.streamBytes(t) - before
	t.Logf("6 kills of walship (seed %d) with a 64 MiB database: the stream grew by %d bytes", seed, grown)
	if grown > 16<<20 {
		t.Fatalf("the stream grew by %d bytes across walship kills: a full copy", grown)
	}
}

package walapply_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/services/walapply"
	"github.com/convex-cluster-manager/ccm/services/walship"
	"github.com/convex-cluster-manager/ccm/shared/daemon"
	"github.com/convex-cluster-manager/ccm/shared/replica"
	"github.com/convex-cluster-manager/ccm/shared/waitfor"
)

// TestMain lets the test binary act as a bare applier process (the code
// ccm-walapply runs), so that a test can kill -9 it at any point.
func TestMain(m *testing.M) {
	if url := os.Getenv("CCM_SHIP_CHILD_NATS"); url != "" {
		daemon.LimitMemory(walship.Spec())
		profileChild("walship")
		if err := shipChild(url, os.Getenv("CCM_SHIP_CHILD_DB")); err != nil {
			fmt.Fprintln(os.Stderr, "ship child:", err)
			os.Exit(3)
		}
		os.Exit(0)
	}
	if url := os.Getenv("CCM_APPLY_CHILD_NATS"); url != "" {
		daemon.LimitMemory(walapply.Spec())
		profileChild("walapply")
		if err := applyChild(url, os.Getenv("CCM_APPLY_CHILD_DB")); err != nil {
			fmt.Fprintln(os.Stderr, "apply child:", err)
			os.Exit(3)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// childJetStream connects a test's child process to the test's NATS server.
func childJetStream(url string) (jetstream.JetStream, error) {
	nc, err := nats.Connect(url)
	if err != nil {
		return nil, err
	}
	return jetstream.New(nc)
}

// applyChild follows the stream into the shadow at path until killed.
func applyChild(url, path string) error {
	js, err := childJetStream(url)
	if err != nil {
		return err
	}
	sh, err := replica.OpenShadow(path)
	if err != nil {
		return err
	}
	ap, err := replica.NewApplier(sh)
	if err != nil {
		return err
	}
	return replica.Follow(context.Background(), js, cluster, ap.Consumed()+1, func(m jetstream.Msg) error {
		md, err := m.Metadata()
		if err != nil {
			return err
		}
		return ap.Handle(md.Sequence.Stream, m.Headers(), m.Data())
	})
}

// readPosition reads a shadow's recorded position (zero if none yet).
func readPosition(t testing.TB, path string) replica.Position {
	t.Helper()
	var p replica.Position
	b, err := os.ReadFile(path + ".ccm-position")
	if errors.Is(err, os.ErrNotExist) {
		return p
	}
	require.NoError(t, err)
	require.NoErrorf(t, json.Unmarshal(b, &p), "position file")
	return p
}

// TestApplyKilledMidFileRecovers kills the applier with SIGKILL at random
// points while it assembles and applies one large multi-chunk file: every
// restart must continue by itself, never refusing a message, and end with
// the leader's content.
func TestApplyKilledMidFileRecovers(t *testing.T) {
	size := 96 // MiB in one transaction; CCM_BIG_MIB measures others
	if testing.Short() {
		size = 24
	}
	if v, err := strconv.Atoi(os.Getenv("CCM_BIG_MIB")); err == nil && v > 0 {
		size = v
	}
	e := newEnv(t)
	s := e.ship(t, 1)
	growTx(t, e.dbPath, size)
	if _, err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	// And a small file after it, so that finishing the large one is not
	// the end: a restart must continue after it, not before.
	w := openDB(t, writerDSN(e.dbPath))
	mustExec(t, w, `INSERT INTO docs (body) VALUES ('after the large transaction')`)
	w.Close()
	target, err := s.Flush(context.Background())
	require.NoError(t, err)
	shadow := filepath.Join(e.dir, "killed", "db.sqlite3")
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, seed))
	t.Logf("seed %d, %d MiB transaction, target TXID %d", seed, size, target)
	start := func() (*exec.Cmd, *bytes.Buffer) {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "CCM_APPLY_CHILD_NATS="+e.url, "CCM_APPLY_CHILD_DB="+shadow)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		require.NoError(t, cmd.Start())
		return cmd, &stderr
	}
	midFile, midApply := 0, 0
	for kill := 0; kill < 12; kill++ {
		cmd, stderr := start()
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		// Every other kill waits for the pages of a verified file to be
		// written (its apply record exists); the others land while the
		// large file's journal grows, at a random fraction of it (applying
		// is fast enough that a delay from the start misses it all).
		wait := reaching(shadow+".ccm-incoming", int64(rng.IntN(size))<<20, 60*time.Second)
		if kill%2 == 1 {
			wait = appearing(shadow+".ccm-incoming.apply", 60*time.Second)
		}
		select {
		case err := <-exited:
			t.Fatalf("applier exited by itself (%v) after %d kills: %s", err, kill, stderr)
		case <-wait:
		}
		cmd.Process.Kill()
		<-exited
		p := readPosition(t, shadow)
		_, journal := os.Stat(shadow + ".ccm-incoming")
		if p.TXID < target && journal == nil {
			midFile++
		}
		if _, err := os.Stat(shadow + ".ccm-incoming.apply"); err == nil {
			midApply++
		}
		if p.TXID >= target {
			break
		}
	}
	// A last start must finish by itself.
	cmd, stderr := start()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := sync.OnceFunc(func() { cmd.Process.Kill(); <-exited })
	defer stop()
	waitfor.Cond(t, 2*time.Minute, func() error {
		p := readPosition(t, shadow)
		if p.TXID >= target {
			return nil
		}
		select {
		case err := <-exited:
			exited <- err // for stop
			t.Fatalf("applier exited by itself (%v): %s", err, stderr)
		default:
		}
		return fmt.Errorf("applier at %+v, want TXID %d", p, target)
	})
	t.Logf("%d kills landed while a file was being assembled or applied, %d while its pages were written", midFile, midApply)
	if midFile == 0 || midApply == 0 {
		t.Fatalf("no kill landed mid-file: the test proved nothing (seed %d)", seed)
	}
	stop()
	assertSame(t, e.dbPath, shadow)

	// A fresh applier takes the whole stream, the large file included:
	// its peak RSS is what applying it costs (a figure, not a test).
	shadow = filepath.Join(e.dir, "fresh", "db.sqlite3")
	cmd, stderr = start()
	exited = make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() { cmd.Process.Kill(); <-exited }()
	waitfor.Cond(t, 2*time.Minute, func() error {
		p := readPosition(t, shadow)
		if p.TXID >= target {
			return nil
		}
		// The child's log is read only once the wait has failed.
		return lazyError(func() string { return fmt.Sprintf("fresh applier at %+v: %s", p, stderr) })
	})
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid)); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "VmHWM:") {
				t.Logf("an applier that applied the %d MiB file: peak RSS %s", size, strings.TrimSpace(strings.TrimPrefix(line, "VmHWM:")))
			}
		}
	}
}

// reaching fires once the file at path holds at least n bytes, or after
// limit.
func reaching(path string, n int64, limit time.Duration) <-chan time.Time {
	c := make(chan time.Time, 1)
	go func() {
		deadline := time.Now().Add(limit)
		for time.Now().Before(deadline) {
			if st, err := os.Stat(path); err == nil && st.Size() >= n {
				break
			}
			time.Sleep(200 * time.Microsecond)
		}
		c <- time.Now()
	}()
	return c
}

// appearing fires once path exists, or after limit.
func appearing(path string, limit time.Duration) <-chan time.Time {
	c := make(chan time.Time, 1)
	go func() {
		deadline := time.Now().Add(limit)
		for time.Now().Before(deadline) {
			if _, err := os.Stat(path); err == nil {
				break
			}
			time.Sleep(time.Millisecond)
		}
		c <- time.Now()
	}()
	return c
}

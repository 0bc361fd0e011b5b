package walapply_test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// child is a walship or walapply process started from the test binary.
type child struct {
	cmd    *exec.Cmd
	stdin  *os.File
	stdout *bufio.Reader
}

func startChild(b *testing.B, env ...string) *child {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	require.NoError(b, err)
	r, w, err := os.Pipe()
	require.NoError(b, err)
	cmd.Stdin = r
	require.NoError(b, cmd.Start())
	r.Close()
	c := &child{cmd: cmd, stdin: w, stdout: bufio.NewReader(out)}
	b.Cleanup(func() {
		w.Close()
		// SIGTERM first: a profiled child writes its profiles on it.
		cmd.Process.Signal(syscall.SIGTERM)
		t := time.AfterFunc(5*time.Second, func() { cmd.Process.Kill() })
		cmd.Wait()
		t.Stop()
	})
	return c
}

// peakRSS is the child's VmHWM in KiB.
func (c *child) peakRSS(b *testing.B) int {
	b.Helper()
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.cmd.Process.Pid))
	require.NoError(b, err)
	for _, line := range strings.Split(string(st), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmHWM:" {
			kib, _ := strconv.Atoi(f[1])
			return kib
		}
	}
	b.Fatal("no VmHWM")
	return 0
}

// BenchmarkLargeTransaction commits one transaction of CCM_BIG_MIB MiB
// (default 256) on a leader whose walship runs in its own process, and
// measures until a walapply process has applied it, through a nats-server
// on loopback. It reports MiB/s from the commit to applied on the
// passive, and the peak RSS of both processes.
func BenchmarkLargeTransaction(b *testing.B) {
	size := 256
	if v, err := strconv.Atoi(os.Getenv("CCM_BIG_MIB")); err == nil && v > 0 {
		size = v
	}
	for range b.N {
		b.StopTimer()
		e := newEnv(b)
		grow(b, e.dbPath, 1)
		ship := startChild(b, "CCM_SHIP_CHILD_NATS="+e.url, "CCM_SHIP_CHILD_DB="+e.dbPath)
		if line, err := ship.stdout.ReadString('\n'); err != nil || !strings.HasPrefix(line, "start:") {
			b.Fatalf("walship child: %q %v", line, err)
		}
		shadow := filepath.Join(e.dir, "passive", "db.sqlite3")
		apply := startChild(b, "CCM_APPLY_CHILD_NATS="+e.url, "CCM_APPLY_CHILD_DB="+shadow)
		flush := func() uint64 {
			b.Helper()
			fmt.Fprintln(ship.stdin, "flush")
			line, err := ship.stdout.ReadString('\n')
			txid, perr := strconv.ParseUint(strings.TrimPrefix(strings.TrimSpace(line), "flushed "), 10, 64)
			if err != nil || perr != nil {
				b.Fatalf("walship child flush: %q %v", line, err)
			}
			return txid
		}
		applied := func(txid uint64) {
			b.Helper()
			for deadline := time.Now().Add(10 * time.Minute); uint64(readPosition(b, shadow).TXID) < txid; time.Sleep(5 * time.Millisecond) {
				if time.Now().After(deadline) {
					b.Fatalf("passive at %+v, want TXID %d", readPosition(b, shadow), txid)
				}
			}
		}
		applied(flush())

		streamBefore := e.streamBytes(b)
		growTx(b, e.dbPath, size)
		start := time.Now()
		b.StartTimer()
		txid := flush()
		shipped := time.Since(start)
		applied(txid)
		b.StopTimer()
		took := time.Since(start)
		b.Logf("shipped after %v, applied after %v; the stream grew by %.1f MiB", shipped.Round(time.Millisecond), took.Round(time.Millisecond),
			float64(e.streamBytes(b)-streamBefore)/(1<<20))
		b.ReportMetric(float64(size)/took.Seconds(), "MiB/s")
		b.ReportMetric(float64(ship.peakRSS(b))/1024, "walship-peak-MiB")
		b.ReportMetric(float64(apply.peakRSS(b))/1024, "walapply-peak-MiB")
		assertSame(b, e.dbPath, shadow)
	}
}

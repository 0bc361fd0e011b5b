package waitfor_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/shared/waitfor"
)

// recorder is a testing.TB that records a failure instead of ending the test.
type recorder struct {
	testing.TB
	failed string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
	panic(r)
}

func run(r *recorder, fn func()) {
	defer func() {
		if p := recover(); p != nil && p != r {
			panic(p)
		}
	}()
	fn()
}

// TestCond: Cond returns once the condition holds, and otherwise fails once
// its time is up, with the condition's last error.
func TestCond(t *testing.T) {
	n := 0
	waitfor.Cond(t, 5*time.Second, func() error {
		if n++; n < 3 {
			return fmt.Errorf("poll %d", n)
		}
		return nil
	})
	require.Equal(t, 3, n)

	r := &recorder{TB: t}
	start := time.Now()
	n = 0
	run(r, func() {
		waitfor.Cond(r, 100*time.Millisecond, func() error { n++; return fmt.Errorf("seen %d", n) })
	})
	require.GreaterOrEqual(t, time.Since(start), 100*time.Millisecond)
	require.Equal(t, fmt.Sprintf("not within 100ms: seen %d", n), r.failed, "the failure names what was seen last")
}

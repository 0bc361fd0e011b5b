package main

import (
	"fmt"
	"maps"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// result is one measured run.
type result struct {
	system      string
	rate        int
	commits     int
	lags        []time.Duration // sorted
	lost        int             // rows never seen on the passive
	cpu         map[string]time.Duration
	rss         map[string]int64 // peak, bytes
	writeWindow time.Duration
}

func (r *result) p(q float64) time.Duration {
	if len(r.lags) == 0 {
		return 0
	}
	i := int(float64(len(r.lags)-1) * q / 100)
	return r.lags[i]
}

func (r *result) print() {
	slices.Sort(r.lags)
	fmt.Printf("%-10s %5d/s  commits %6d  lag p50 %7s  p99 %7s  max %7s  unseen %d\n", r.system, r.rate, r.commits,
		ms(r.p(50)), ms(r.p(99)), ms(r.p(100)), r.lost)
	for _, name := range slices.Sorted(maps.Keys(r.cpu)) {
		fmt.Printf("           %-22s CPU %5.1f%% of a core, peak RSS %5.1f MiB\n", name,
			100*r.cpu[name].Seconds()/r.writeWindow.Seconds(), float64(r.rss[name])/(1<<20))
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000) }

// procCPU returns the user+system CPU time of pid.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name in parentheses.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// procPeakRSS returns the peak resident set of pid (VmHWM).
func procPeakRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			f := strings.Fields(line)
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

func machine() string {
	model := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "model name") {
				model = strings.TrimSpace(strings.SplitN(line, ":", 2)[1])
				break
			}
		}
	}
	return fmt.Sprintf("%d CPUs, %s, %s", runtime.NumCPU(), model, runtime.Version())
}
